"""Rule evaluate_stage2: thin adapter; the logic is bcpath.steps.erpr.evaluate_stage2_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.erpr:evaluate_stage2_step")  # noqa: F821 (snakemake is injected)
