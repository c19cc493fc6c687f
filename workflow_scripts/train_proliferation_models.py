"""Rule train_proliferation_models: thin adapter; the logic is bcpath.steps.proliferation.train_proliferation_models_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.proliferation:train_proliferation_models_step")  # noqa: F821 (snakemake is injected)
