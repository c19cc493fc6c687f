"""Rule interpret_tcav: thin adapter; the logic is bcpath.steps.erpr.tcav_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.erpr:tcav_step")  # noqa: F821 (snakemake is injected)
