"""Rule interpret_clusters: thin adapter; the logic is bcpath.erpr.interpret_steps.cluster_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.erpr.interpret_steps:cluster_step")  # noqa: F821 (snakemake is injected)
