"""Rule segment_nuclei: thin adapter; the logic is bcpath.steps.nuclei.segment_nuclei_step.

input: slide, info, mask, qc (optional region); params: nuclei, failure_record;
output: labels, geojson, features.
"""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.nuclei:segment_nuclei_step")  # noqa: F821 (snakemake is injected)
