"""Rule nuclei_tumor_region: thin adapter; the logic is bcpath.steps.nuclei.tumor_region_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.nuclei:tumor_region_step")  # noqa: F821 (snakemake is injected)
