"""Rule detect_mitoses: thin adapter; the logic is bcpath.proliferation.steps.detect_mitoses_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.proliferation.steps:detect_mitoses_step")  # noqa: F821 (snakemake is injected)
