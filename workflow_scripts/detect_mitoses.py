"""Rule detect_mitoses: thin adapter; the logic is bcpath.steps.proliferation.detect_mitoses_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.proliferation:detect_mitoses_step")  # noqa: F821 (snakemake is injected)
