"""Rule proliferation_table: thin adapter; the logic is bcpath.steps.proliferation.proliferation_table_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.proliferation:proliferation_table_step")  # noqa: F821 (snakemake is injected)
