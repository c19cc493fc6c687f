"""Rule dearray_tma: thin adapter; the logic is bcpath.ihc.steps.dearray_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.ihc.steps:dearray_step")  # noqa: F821 (snakemake is injected)
