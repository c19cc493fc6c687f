"""Rule train_stage2: thin adapter; the logic is bcpath.steps.erpr.train_stage2_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.erpr:train_stage2_step")  # noqa: F821 (snakemake is injected)
