# Tumour proliferation on H&E (Shah et al. / TUPAC16): tumour map → mitoses in the tumour →
# hotspot + slide features → grade and proliferation-score models → proliferation.csv.
# Steps: bcpath.steps.proliferation (the work: bcpath.proliferation). Set-up and input functions: rules/proliferation_common.smk.


rule train_tumor_locnet:
    input:
        samples=lambda wildcards: samples_sheet(),
        tiles=lambda wildcards: he_slide_outputs("results/slides/{slide}/tiles.zarr"),
        grids=lambda wildcards: he_slide_outputs("results/slides/{slide}/grid.parquet"),
    output:
        weights=f"results/models/{LOCNET_ID}/best.pt",
        train_json=f"results/models/{LOCNET_ID}/train.json",
    log:
        f"logs/train_tumor_locnet/{LOCNET_ID}.log",
    benchmark:
        f"benchmarks/train_tumor_locnet/{LOCNET_ID}.tsv"
    params:
        code=step_code("train_tumor_locnet"),
        registry=PROLIF_REGISTRY_PATH,
        model_id=LOCNET_ID,
        tumor_classes=PROLIF["tumor_classes"],
        training=PROLIF["locnet_training"],
    threads: half_the_cores(LOCAL_CORES, cap=8)
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=gpu_request(PROLIF["locnet_training"]["device"]),
    conda:
        "../envs/proliferation.yaml"
    script:
        "../workflow_scripts/train_tumor_locnet.py"


rule locate_tumor:
    input:
        unpack(tumor_source),
        tiles="results/slides/{slide}/tiles.zarr",
        grid="results/slides/{slide}/grid.parquet",
        info="results/slides/{slide}/info.json",
        qc="results/slides/{slide}/tissue/qc.json",
        thumbnail="results/slides/{slide}/tissue/thumbnail.png",
    output:
        zarr=directory("results/slides/{slide}/proliferation/tumor.zarr"),
        png=report(
            "results/slides/{slide}/proliferation/tumor.png",
            category="Proliferation",
            subcategory="tumour maps",
            caption="../report/tumor_map.rst",
            labels={"slide": "{slide}", "figure": "p(tumour)"},
        ),
        geojson="results/slides/{slide}/proliferation/tumor.geojson",
    log:
        "logs/locate_tumor/{slide}.log",
    benchmark:
        "benchmarks/locate_tumor/{slide}.tsv"
    params:
        code=step_code("locate_tumor"),
        source=PROLIF["tumor"],
        registry=PROLIF_REGISTRY_PATH,
        model_id=LOCNET_ID,
        threshold=PROLIF["tumor_threshold"],
        device=PROLIF["detection"]["device"],
        failure_record=failure_record("locate_tumor"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/proliferation.yaml"
    script:
        "../workflow_scripts/locate_tumor.py"


rule train_mitosis_model:
    input:
        samples=lambda wildcards: samples_sheet(),
        slides=lambda wildcards: [SAMPLES.at[s, "path"] for s in HE_SLIDES],
    output:
        weights=f"results/models/{MITOSIS_ID}/best.pt",
        train_json=f"results/models/{MITOSIS_ID}/train.json",
    log:
        f"logs/train_mitosis_model/{MITOSIS_ID}.log",
    benchmark:
        f"benchmarks/train_mitosis_model/{MITOSIS_ID}.tsv"
    params:
        code=step_code("train_mitosis_model"),
        registry=PROLIF_REGISTRY_PATH,
        model_id=MITOSIS_ID,
        tumor_classes=PROLIF["tumor_classes"],
        training=PROLIF["mitosis_training"],
    threads: half_the_cores(LOCAL_CORES, cap=8)
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=gpu_request(PROLIF["mitosis_training"]["device"]),
    conda:
        "../envs/proliferation.yaml"
    script:
        "../workflow_scripts/train_mitosis_model.py"


rule detect_mitoses:
    input:
        unpack(lambda wildcards: prolif_weights(MITOSIS_ID)),
        slide=slide_path,
        info="results/slides/{slide}/info.json",
        tumor="results/slides/{slide}/proliferation/tumor.zarr",
    output:
        mitoses="results/slides/{slide}/proliferation/mitoses.parquet",
        geojson="results/slides/{slide}/proliferation/mitoses.geojson",
        hotspot="results/slides/{slide}/proliferation/hotspot.geojson",
        features="results/slides/{slide}/proliferation/features.json",
    log:
        "logs/detect_mitoses/{slide}.log",
    benchmark:
        "benchmarks/detect_mitoses/{slide}.tsv"
    params:
        code=step_code("detect_mitoses"),
        registry=PROLIF_REGISTRY_PATH,
        model_id=MITOSIS_ID,
        tumor_threshold=PROLIF["tumor_threshold"],
        detection=PROLIF["detection"],
        hotspot=PROLIF["hotspot"],
        failure_record=failure_record("detect_mitoses"),
    threads: 1
    resources:
        mem_mb=3000,
        runtime=60,
        gpu=gpu_request(PROLIF["detection"]["device"]),
    conda:
        "../envs/proliferation.yaml"
    script:
        "../workflow_scripts/detect_mitoses.py"


rule train_proliferation_models:
    input:
        samples=lambda wildcards: samples_sheet(),
        features=lambda wildcards: he_slide_outputs("results/slides/{slide}/proliferation/features.json"),
        mitoses=lambda wildcards: he_slide_outputs("results/slides/{slide}/proliferation/mitoses.parquet"),
    output:
        grade="results/cohort/proliferation/models/grade.json",
        score="results/cohort/proliferation/models/score.json",
        bow="results/cohort/proliferation/models/bow.json",
        table="results/cohort/proliferation/features.parquet",
    log:
        "logs/train_proliferation_models/cohort.log",
    params:
        code=step_code("train_proliferation_models"),
        models=PROLIF["models"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        "../envs/proliferation.yaml"
    script:
        "../workflow_scripts/train_proliferation_models.py"


rule proliferation_table:
    input:
        samples=lambda wildcards: samples_sheet(),
        table="results/cohort/proliferation/features.parquet",
        grade="results/cohort/proliferation/models/grade.json",
        score="results/cohort/proliferation/models/score.json",
    output:
        predictions="results/cohort/proliferation/predictions.csv",
        evaluation="results/cohort/proliferation/evaluation.json",
        roc=report(
            "results/cohort/proliferation/roc.png",
            category="Proliferation",
            subcategory="slide models",
            caption="../report/proliferation_roc.rst",
            labels={"figure": "grade ROC"},
        ),
        scatter=report(
            "results/cohort/proliferation/scatter.png",
            category="Proliferation",
            subcategory="slide models",
            caption="../report/proliferation_scatter.rst",
            labels={"figure": "score scatter"},
        ),
        cohort="results/cohort/proliferation.csv",
    log:
        "logs/proliferation_table/cohort.log",
    params:
        code=step_code("proliferation_table"),
        evaluation=PROLIF["evaluation"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/proliferation.yaml"
    script:
        "../workflow_scripts/proliferation_table.py"
