"""Rule train_mitosis_model: thin adapter; the logic is bcpath.steps.proliferation.train_mitosis_model_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.proliferation:train_mitosis_model_step")  # noqa: F821 (snakemake is injected)
