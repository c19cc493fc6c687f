"""Rule locate_tumor: thin adapter; the logic is bcpath.steps.proliferation.locate_tumor_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.proliferation:locate_tumor_step")  # noqa: F821 (snakemake is injected)
