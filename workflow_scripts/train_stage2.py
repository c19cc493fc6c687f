"""Rule train_stage2: thin adapter; the logic is bcpath.erpr.steps.train_stage2_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.erpr.steps:train_stage2_step")  # noqa: F821 (snakemake is injected)
