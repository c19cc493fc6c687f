"""Rule train_nuclei_model: thin adapter; the logic is bcpath.steps.nuclei.train_nuclei_model_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.nuclei:train_nuclei_model_step")  # noqa: F821 (snakemake is injected)
