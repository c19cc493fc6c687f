"""Rule aggregate_hscore: thin adapter; the logic is bcpath.steps.ihc.aggregate_hscore_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.ihc:aggregate_hscore_step")  # noqa: F821 (snakemake is injected)
