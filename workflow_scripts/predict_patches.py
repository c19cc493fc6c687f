"""Rule predict_patches: thin adapter; the logic is bcpath.steps.erpr.predict_patches_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.erpr:predict_patches_step")  # noqa: F821 (snakemake is injected)
