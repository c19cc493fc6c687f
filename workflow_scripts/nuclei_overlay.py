"""Rule nuclei_overlay: thin adapter; the logic is bcpath.steps.report.nuclei_overlay_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.report:nuclei_overlay_step")  # noqa: F821 (snakemake is injected)
