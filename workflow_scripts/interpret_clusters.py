"""Rule interpret_clusters: thin adapter; the logic is bcpath.steps.erpr.cluster_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.erpr:cluster_step")  # noqa: F821 (snakemake is injected)
