# Figures and tables for `snakemake --report`: one category per system (QC, ER/PR/HER2, Nuclei,
# Proliferation, IHC H-Score). The other rule files mark their own figures with report(); the
# rules here draw the figures that no analysis rule writes. They only read finished outputs and
# are cheap, so they run where Snakemake runs (localrule: no cluster job per figure).
# Steps: bcpath.steps.report; figures: bcpath.report and bcpath.overlays (drawing). Captions: report/*.rst. Targets and
# input functions: rules/report_common.smk.


rule report_qc_table:
    input:
        csv="results/cohort/qc.csv",
    output:
        html=report(
            "results/cohort/qc.html",
            category="QC",
            subcategory="cohort table",
            caption="../report/qc_table.rst",
            labels={"table": "qc.csv"},
        ),
    log:
        "logs/report_qc_table/cohort.log",
    params:
        code=step_code("report_table"),
        title="Slide QC (results/cohort/qc.csv)",
        note="One row per slide. Yellow rows carry a QC flag, red rows failed (see error and results/cohort/failures.csv).",
    localrule: True
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../envs/wsi.yaml"
    script:
        "../workflow_scripts/report_table.py"


rule nuclei_overlay:
    input:
        slide=slide_path,
        info="results/slides/{slide}/info.json",
        labels="results/slides/{slide}/nuclei/labels.zarr",
        features="results/slides/{slide}/nuclei/features.parquet",
    output:
        png=report(
            "results/slides/{slide}/nuclei/overlay.png",
            category="Nuclei",
            subcategory="overlays",
            caption="../report/nuclei_overlay.rst",
            labels={"slide": "{slide}", "figure": "nuclei contours"},
        ),
    log:
        "logs/nuclei_overlay/{slide}.log",
    params:
        code=step_code("nuclei_overlay"),
        window_um=256,
        failure_record=failure_record("nuclei_overlay"),
    localrule: True
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/nuclei.yaml"
    script:
        "../workflow_scripts/nuclei_overlay.py"


rule nuclei_counts:
    input:
        features=lambda wildcards: nuclei_slide_outputs("results/slides/{slide}/nuclei/features.parquet"),
        regions=_nuclei_region_masks,
        qc=lambda wildcards: nuclei_slide_outputs("results/slides/{slide}/tissue/qc.json"),
    output:
        csv="results/cohort/nuclei/counts.csv",
        html=report(
            "results/cohort/nuclei/counts.html",
            category="Nuclei",
            subcategory="counts",
            caption="../report/nuclei_counts.rst",
            labels={"table": "nuclei per slide"},
        ),
    log:
        "logs/nuclei_counts/cohort.log",
    params:
        code=step_code("nuclei_counts"),
        slides=NUCLEI_SLIDES,
        region=NUCLEI_REPORT_REGION,
    localrule: True
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/nuclei.yaml"
    script:
        "../workflow_scripts/nuclei_counts.py"


rule hotspot_overlay:
    input:
        slide=slide_path,
        info="results/slides/{slide}/info.json",
        thumbnail="results/slides/{slide}/tissue/thumbnail.png",
        qc="results/slides/{slide}/tissue/qc.json",
        tumor="results/slides/{slide}/proliferation/tumor.geojson",
        features="results/slides/{slide}/proliferation/features.json",
        mitoses="results/slides/{slide}/proliferation/mitoses.parquet",
    output:
        png=report(
            "results/slides/{slide}/proliferation/hotspot.png",
            category="Proliferation",
            subcategory="mitotic hotspots",
            caption="../report/hotspot_overlay.rst",
            labels={"slide": "{slide}", "figure": "hotspot"},
        ),
    log:
        "logs/hotspot_overlay/{slide}.log",
    params:
        code=step_code("hotspot_overlay"),
        closeup_px=600,
        failure_record=failure_record("hotspot_overlay"),
    localrule: True
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/proliferation.yaml"
    script:
        "../workflow_scripts/hotspot_overlay.py"


rule report_hscore_table:
    input:
        csv="results/cohort/hscore.csv",
    output:
        html=report(
            "results/cohort/ihc/hscore.html",
            category="IHC H-Score",
            subcategory="cohort table",
            caption="../report/hscore_table.rst",
            labels={"table": "hscore.csv"},
        ),
    log:
        "logs/report_hscore_table/cohort.log",
    params:
        code=step_code("report_table"),
        title="H-Score per TMA core (results/cohort/hscore.csv)",
        note="One row per core: cell-scoring, NAP and RAM-CNN H-Scores (0-300) beside the reference. Yellow rows carry a flag (missing core, low tumour, ...).",
    localrule: True
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../envs/ihc.yaml"
    script:
        "../workflow_scripts/report_table.py"
