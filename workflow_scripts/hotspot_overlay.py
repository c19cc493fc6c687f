"""Rule hotspot_overlay: thin adapter; the logic is bcpath.report.hotspot_overlay_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.report:hotspot_overlay_step")  # noqa: F821 (snakemake is injected)
