"""Rules report_qc_table and report_hscore_table: thin adapter; the logic is bcpath.steps.report.table_html_step."""

from bcpath.workflow import run_rule

run_rule(snakemake, "bcpath.steps.report:table_html_step")  # noqa: F821 (snakemake is injected)
