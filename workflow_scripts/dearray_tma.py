"""Rule dearray_tma: thin adapter; the logic is bcpath.steps.ihc.dearray_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.ihc:dearray_step")  # noqa: F821 (snakemake is injected)
