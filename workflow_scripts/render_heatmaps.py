"""Rule render_heatmaps: thin adapter; the logic is bcpath.steps.erpr.render_heatmaps_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.erpr:render_heatmaps_step")  # noqa: F821 (snakemake is injected)
