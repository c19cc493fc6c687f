"""Rule train_patch_classifier: thin adapter; the logic is bcpath.steps.erpr.train_patch_classifier_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.erpr:train_patch_classifier_step")  # noqa: F821 (snakemake is injected)
