"""Rule make_demo_cohort: thin adapter; the logic is bcpath.pipeline.make_demo_cohort_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.pipeline:make_demo_cohort_step")  # noqa: F821 (snakemake is injected)
