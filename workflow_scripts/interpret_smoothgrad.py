"""Rule interpret_smoothgrad: thin adapter; the logic is bcpath.steps.erpr.smoothgrad_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.erpr:smoothgrad_step")  # noqa: F821 (snakemake is injected)
