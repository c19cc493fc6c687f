"""Rule interpret_tcav: thin adapter; the logic is bcpath.erpr.interpret_steps.tcav_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.erpr.interpret_steps:tcav_step")  # noqa: F821 (snakemake is injected)
