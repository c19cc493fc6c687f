"""Rule nuclei_counts: thin adapter; the logic is bcpath.steps.report.nuclei_counts_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.report:nuclei_counts_step")  # noqa: F821 (snakemake is injected)
