# bcpath: breast-cancer computational pathology as one Snakemake DAG.
# Wiring only; helpers live in rules/common.smk, logic in src/bcpath.
from snakemake.utils import min_version, validate

from bcpath.cohort import load_schema
from bcpath.errors import BcpathError
from bcpath.workflow import coerce_command_line_values, validate_config
from snakemake.exceptions import WorkflowError

min_version("9.0")


configfile: "config.yaml"


# Nested --config values (e.g. demo='{n_slides: 24}') arrive as strings: type them first.
coerce_command_line_values(config, load_schema("config"))
# One line per problem (key path, value, what is allowed, "did you mean ...?"), before any job.
try:
    validate_config(config, load_schema("config"))
except BcpathError as error:
    raise WorkflowError(str(error)) from None
validate(config, "schemas/config.schema.yaml")  # fills in defaults


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/slides.smk"
include: "rules/erpr_common.smk"
include: "rules/erpr.smk"
include: "rules/ihc_common.smk"
include: "rules/ihc.smk"
include: "rules/nuclei_common.smk"
include: "rules/nuclei.smk"
include: "rules/proliferation_common.smk"
include: "rules/proliferation.smk"
include: "rules/report_common.smk"
include: "rules/report.smk"


rule all:
    input:
        all_targets(),
        erpr_targets(),
        ihc_targets(),
        nuclei_targets(),
        proliferation_targets(),
        report_targets(),
    default_target: True


onsuccess:
    write_failures_report()


onerror:
    write_failures_report(failed_run=True)
