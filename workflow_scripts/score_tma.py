"""Rule score_tma: thin adapter; the logic is bcpath.steps.ihc.score_tma_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.ihc:score_tma_step")  # noqa: F821 (snakemake is injected)
