# Nuclei segmentation on H&E slides (Lagree et al. 2021): tiled, stitched, streaming.
# [nuclei_tumor_region] → segment_nuclei → nuclei/labels.zarr, nuclei.geojson, features.parquet;
# train_nuclei_model on dataset folders. Steps: bcpath.steps.nuclei (the
# work: bcpath.nuclei.slide, bcpath.nuclei.predict and bcpath.nuclei.training);
# set-up and input functions: rules/nuclei_common.smk.


rule nuclei_tumor_region:
    input:
        predictions=f"results/slides/{{slide}}/predictions/{NUCLEI_REGION_MODEL}.parquet",
        info="results/slides/{slide}/info.json",
        mask="results/slides/{slide}/tissue/mask.png",
        qc="results/slides/{slide}/tissue/qc.json",
    output:
        region="results/slides/{slide}/nuclei/region.png",
    log:
        "logs/nuclei_tumor_region/{slide}.log",
    params:
        code=step_code("nuclei_tumor_region"),
        threshold=NUCLEI["tumor_threshold"],
        failure_record=failure_record("nuclei_tumor_region"),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/nuclei.yaml"
    script:
        "../workflow_scripts/nuclei_tumor_region.py"


rule segment_nuclei:
    input:
        unpack(nuclei_region),
        model=NUCLEI_MODEL_FILES,
        slide=slide_path,
        info="results/slides/{slide}/info.json",
        mask="results/slides/{slide}/tissue/mask.png",
        qc="results/slides/{slide}/tissue/qc.json",
    output:
        labels=directory("results/slides/{slide}/nuclei/labels.zarr"),
        geojson="results/slides/{slide}/nuclei/nuclei.geojson",
        features="results/slides/{slide}/nuclei/features.parquet",
    log:
        "logs/segment_nuclei/{slide}.log",
    benchmark:
        "benchmarks/segment_nuclei/{slide}.tsv"
    params:
        code=step_code("segment_nuclei"),
        nuclei=NUCLEI,
        failure_record=failure_record("segment_nuclei"),
    # tiles are read and segmented in a thread pool (OpenCV/scipy release the GIL)
    threads: 1
    resources:
        mem_mb=3000,
        runtime=120,
    conda:
        "../envs/nuclei.yaml"
    script:
        "../workflow_scripts/segment_nuclei.py"


rule train_nuclei_model:
    input:
        data=NUCLEI["training"]["data"],
    output:
        weights="results/models/nuclei/best.pt",
        last="results/models/nuclei/last.pt",
        train_json="results/models/nuclei/train.json",
        log_csv="results/models/nuclei/log.csv",
        stain="results/models/nuclei/stain.json",
    log:
        "logs/train_nuclei_model/nuclei.log",
    benchmark:
        "benchmarks/train_nuclei_model/nuclei.tsv"
    params:
        code=step_code("train_nuclei_model"),
        training=NUCLEI["training"],
        mpp=NUCLEI["mpp"],
    # one thread on CPU (two oversubscribe a 2-core machine); CUDA when present
    threads: 1
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=gpu_request(NUCLEI["training"].get("device")),
    conda:
        "../envs/nuclei.yaml"
    script:
        "../workflow_scripts/train_nuclei_model.py"


rule evaluate_nuclei:
    input:
        model=NUCLEI_MODEL_FILES,
        data=NUCLEI["evaluation"]["data"],
    output:
        csv="results/cohort/nuclei/evaluation.csv",
    log:
        "logs/evaluate_nuclei/nuclei.log",
    params:
        code=step_code("evaluate_nuclei"),
        model=nuclei_model_param,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../envs/nuclei.yaml"
    script:
        "../workflow_scripts/evaluate_nuclei.py"
