# IHC H-Score on tissue microarrays (Liu et al. 2019): slides with stain IHC in the sample sheet.
# dearray_tma → score_tma (cell scoring, NAP, QC flags, SINI/SITI) → collect_ihc_cores →
# [train_ramcnn] → aggregate_hscore (results/cohort/hscore.csv). Steps: bcpath.steps.ihc (the
# work: bcpath.ihc);
# set-up and input functions: rules/ihc_common.smk.


rule dearray_tma:
    input:
        unpack(ihc_slide_inputs),
        core_map=core_map_input,
    output:
        cores="results/slides/{slide}/ihc/cores.parquet",
    log:
        "logs/dearray_tma/{slide}.log",
    params:
        code=step_code("dearray_tma"),
        ihc=IHC,
        mask_mpp=config["tissue"]["mask_mpp"],
        core_map=sheet_value("core_map"),
        core_image=lambda wildcards: wildcards.slide in CORE_IMAGES,
        slide_id=lambda wildcards: wildcards.slide,
        mpp=sheet_value("mpp"),
        fingerprint=lambda wildcards: slide_fingerprint(wildcards) if wildcards.slide in CORE_IMAGES else "",
        failure_record=failure_record("dearray_tma"),
    # a thumbnail and morphology on it
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/ihc.yaml"
    script:
        "../workflow_scripts/dearray_tma.py"


rule score_tma:
    input:
        unpack(ihc_slide_inputs),
        cores="results/slides/{slide}/ihc/cores.parquet",
        annotations=annotations_input,
        nuclei_model=IHC_NUCLEI_MODEL_FILES,
    output:
        scores="results/slides/{slide}/ihc/scores.parquet",
        geojson="results/slides/{slide}/ihc/cells.geojson",
        cores=directory("results/slides/{slide}/ihc/cores"),
    log:
        "logs/score_tma/{slide}.log",
    benchmark:
        "benchmarks/score_tma/{slide}.tsv"
    params:
        code=step_code("score_tma"),
        ihc=IHC,
        annotations=sheet_value("annotations"),
        min_blur_score=config["qc"]["min_blur_score"],
        core_image=lambda wildcards: wildcards.slide in CORE_IMAGES,
        slide_id=lambda wildcards: wildcards.slide,
        mpp=sheet_value("mpp"),
        failure_record=failure_record("score_tma"),
    # cores one after another on one thread (deconvolution, the default detector's two U-Net
    # passes, watershed); peak RSS about 1.1 GB with the U-Net
    threads: 1
    resources:
        mem_mb=3000,
        runtime=60,
    conda:
        "../envs/ihc.yaml"
    script:
        "../workflow_scripts/score_tma.py"


rule collect_ihc_cores:
    input:
        scores=ihc_slide_outputs("results/slides/{slide}/ihc/scores.parquet"),
        core_scores=[p for s in IHC_SLIDES if (p := optional_value(SAMPLES, s, "core_scores"))],
        npz=ihc_slide_outputs("results/slides/{slide}/ihc/cores"),
    output:
        table="results/cohort/ihc/cores.csv",
    log:
        "logs/collect_ihc_cores/cohort.log",
    params:
        code=step_code("collect_ihc_cores"),
        core_scores={s: optional_value(SAMPLES, s, "core_scores") for s in IHC_SLIDES},
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/ihc.yaml"
    script:
        "../workflow_scripts/collect_ihc_cores.py"


rule train_ramcnn:
    input:
        cores="results/cohort/ihc/cores.csv",
    output:
        model=directory("results/models/ramcnn"),
        cv="results/cohort/ihc/ramcnn_cv.csv",
        metrics="results/cohort/ihc/ramcnn_metrics.json",
    log:
        "logs/train_ramcnn/cohort.log",
    benchmark:
        "benchmarks/train_ramcnn/cohort.tsv"
    params:
        code=step_code("train_ramcnn"),
        ramcnn=RAMCNN,
    # one thread: on 2 busy cores, 2 intra-op threads ran 20x slower (oversubscription); CUDA when present
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=gpu_request(RAMCNN.get("device")),
    conda:
        "../envs/ihc.yaml"
    script:
        "../workflow_scripts/train_ramcnn.py"


rule aggregate_hscore:
    input:
        unpack(ramcnn_inputs),
        cores="results/cohort/ihc/cores.csv",
    output:
        csv="results/cohort/hscore.csv",
        agreement="results/cohort/ihc/agreement.json",
        scatter=report(
            "results/cohort/ihc/hscore_scatter.png",
            category="IHC H-Score",
            subcategory="agreement",
            caption="../report/hscore_scatter.rst",
            labels={"figure": "H-Score scatter"},
        ),
    log:
        "logs/aggregate_hscore/cohort.log",
    params:
        code=step_code("aggregate_hscore"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/ihc.yaml"
    script:
        "../workflow_scripts/aggregate_hscore.py"
