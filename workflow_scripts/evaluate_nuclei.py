"""Rule evaluate_nuclei: thin adapter; the logic is bcpath.steps.nuclei.evaluate_dataset_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.nuclei:evaluate_dataset_step")  # noqa: F821 (snakemake is injected)
