"""Rule train_patch_classifier: thin adapter; the logic is bcpath.erpr.steps.train_patch_classifier_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.erpr.steps:train_patch_classifier_step")  # noqa: F821 (snakemake is injected)
