"""Rule detect_tissue: thin adapter; the logic is bcpath.steps.slides.detect_tissue_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.slides:detect_tissue_step")  # noqa: F821 (snakemake is injected)
