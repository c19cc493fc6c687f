# bcpath: breast-cancer computational pathology as one Snakemake DAG.
# Wiring only; helpers live in rules/common.smk, logic in src/bcpath.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "schemas/config.schema.yaml")


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/slides.smk"


rule all:
    input:
        all_targets(),
    default_target: True


onsuccess:
    write_failures_report()


onerror:
    write_failures_report()
