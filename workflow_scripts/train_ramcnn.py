"""Rule train_ramcnn: thin adapter; the logic is bcpath.steps.ihc.train_ramcnn_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.ihc:train_ramcnn_step")  # noqa: F821 (snakemake is injected)
