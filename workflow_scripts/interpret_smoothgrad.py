"""Rule interpret_smoothgrad: thin adapter; the logic is bcpath.erpr.interpret_steps.smoothgrad_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.erpr.interpret_steps:smoothgrad_step")  # noqa: F821 (snakemake is injected)
