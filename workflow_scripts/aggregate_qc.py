"""Rule aggregate_qc: thin adapter; the logic is bcpath.steps.slides.aggregate_qc_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.slides:aggregate_qc_step")  # noqa: F821 (snakemake is injected)
