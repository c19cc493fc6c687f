"""Rule collect_ihc_cores: thin adapter; the logic is bcpath.steps.ihc.collect_cores_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.ihc:collect_cores_step")  # noqa: F821 (snakemake is injected)
