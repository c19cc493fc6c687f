"""Rule train_tumor_locnet: thin adapter; the logic is bcpath.steps.proliferation.train_tumor_locnet_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.proliferation:train_tumor_locnet_step")  # noqa: F821 (snakemake is injected)
