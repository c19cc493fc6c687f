"""Rule tile_slide: thin adapter; the logic is bcpath.pipeline.tile_slide_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.pipeline:tile_slide_step")  # noqa: F821 (snakemake is injected)
