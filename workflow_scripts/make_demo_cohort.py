"""Rule make_demo_cohort: thin adapter; the logic is bcpath.steps.demo.make_demo_cohort_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.demo:make_demo_cohort_step")  # noqa: F821 (snakemake is injected)
