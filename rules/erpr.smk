# ER/PR/HER2 from H&E (Gamble et al. 2021): stage-1 patch models → predictions → heatmaps →
# stage-2 logistic regression per biomarker → evaluation. Steps: bcpath.steps.erpr
# (the work: bcpath.erpr).
# Set-up and input functions: rules/erpr_common.smk.


wildcard_constraints:
    model="[A-Za-z0-9][A-Za-z0-9._-]*",
    biomarker="|".join(BIOMARKERS),


rule train_patch_classifier:
    input:
        samples=lambda wildcards: samples_sheet(),
        slides=lambda wildcards: [ancient(SAMPLES.at[s, "path"]) for s in HE_SLIDES],
    output:
        weights="results/models/{model}/best.pt",
        last="results/models/{model}/last.pt",
        train_json="results/models/{model}/train.json",
        log_csv="results/models/{model}/log.csv",
        patches="results/models/{model}/patches.csv",
    log:
        "logs/train_patch_classifier/{model}.log",
    benchmark:
        "benchmarks/train_patch_classifier/{model}.tsv"
    params:
        code=step_code("train_patch_classifier"),
        registry=REGISTRY_PATH,
        model_id=lambda wildcards: wildcards.model,
        biomarker=lambda wildcards: MODEL_BIOMARKER[wildcards.model],
        training=ERPR["training"],
    # CPU: the threads go to the model's intra-op threads (half the cores: two trainings run side by side)
    threads: half_the_cores(LOCAL_CORES, cap=8)
    resources:
        mem_mb=6000,
        runtime=240,
        gpu=gpu_request(ERPR["training"].get("device")),
    conda:
        "../envs/erpr.yaml"
    script:
        "../workflow_scripts/train_patch_classifier.py"


# One job per slide runs every active stage-1 model on one read of the tiles (48 jobs of ~8 s,
# each starting torch and decoding the same tiles, were 16).
rule predict_patches:
    input:
        unpack(stage1_weights_all),
        tiles="results/slides/{slide}/tiles.zarr",
        grid="results/slides/{slide}/grid.parquet",
        mask="results/slides/{slide}/tissue/mask.png",
        qc="results/slides/{slide}/tissue/qc.json",
    output:
        predictions=ERPR_SLIDE_PREDICTIONS,
    log:
        "logs/predict_patches/{slide}.log",
    benchmark:
        "benchmarks/predict_patches/{slide}.tsv"
    params:
        code=step_code("predict_patches"),
        registry=REGISTRY_PATH,
        model_ids=list(ERPR_ACTIVE.values()),
        inference=ERPR["inference"],
        failure_record=failure_record("predict_patches"),
    # 1 on CPU: two slides run side by side (gpu is 0 without a GPU), which hides each job's
    # torch start-up. On a GPU give it cores for DataLoader workers:
    # --set-threads predict_patches=8 (profiles/slurm does).
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=gpu_request(ERPR["inference"]["device"]),
    conda:
        "../envs/erpr.yaml"
    script:
        "../workflow_scripts/predict_patches.py"


# One job per slide draws every model's heatmaps (outputs zarr_<k>, png_<k>, geojson_<k>).
rule render_heatmaps:
    input:
        predictions=ERPR_SLIDE_PREDICTIONS,
        thumbnail="results/slides/{slide}/tissue/thumbnail.png",
        qc="results/slides/{slide}/tissue/qc.json",
        info="results/slides/{slide}/info.json",
    output:
        **heatmap_outputs(),
    log:
        "logs/render_heatmaps/{slide}.log",
    benchmark:
        "benchmarks/render_heatmaps/{slide}.tsv"
    params:
        code=step_code("render_heatmaps"),
        model_ids=list(ERPR_ACTIVE.values()),
        geojson_threshold=ERPR["heatmaps"]["geojson_threshold"],
        failure_record=failure_record("render_heatmaps"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/erpr.yaml"
    script:
        "../workflow_scripts/render_heatmaps.py"


rule train_stage2:
    input:
        samples=lambda wildcards: samples_sheet(),
        predictions=lambda wildcards: he_slide_outputs(f"results/slides/{{slide}}/predictions/{ERPR_ACTIVE[wildcards.biomarker]}.parquet"),
    output:
        model="results/cohort/stage2/{biomarker}/model.json",
        tuning="results/cohort/stage2/{biomarker}/tuning.csv",
    log:
        "logs/train_stage2/{biomarker}.log",
    params:
        code=step_code("train_stage2"),
        biomarker=lambda wildcards: wildcards.biomarker,
        stage2=ERPR["stage2"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/erpr.yaml"
    script:
        "../workflow_scripts/train_stage2.py"


rule evaluate_stage2:
    input:
        model="results/cohort/stage2/{biomarker}/model.json",
        samples=lambda wildcards: samples_sheet(),
        predictions=lambda wildcards: he_slide_outputs(f"results/slides/{{slide}}/predictions/{ERPR_ACTIVE[wildcards.biomarker]}.parquet"),
    output:
        predictions="results/cohort/stage2/{biomarker}/predictions.csv",
        evaluation="results/cohort/stage2/{biomarker}/evaluation.json",
        roc=report(
            "results/cohort/stage2/{biomarker}/roc.png",
            category="ER/PR/HER2",
            caption="../report/erpr_roc.rst",
            subcategory="ROC curves",
            labels={"biomarker": "{biomarker}"},
        ),
    log:
        "logs/evaluate_stage2/{biomarker}.log",
    params:
        code=step_code("evaluate_stage2"),
        biomarker=lambda wildcards: wildcards.biomarker,
        evaluation=ERPR["evaluation"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/erpr.yaml"
    script:
        "../workflow_scripts/evaluate_stage2.py"


# --- Interpretability (optional targets: `snakemake --cores 2 interpret`) ----------------------


rule interpret:
    input:
        interpret_targets(),
    localrule: True


rule interpret_smoothgrad:
    input:
        unpack(biomarker_weights),
        predictions=lambda wildcards: model_predictions(ERPR_ACTIVE[wildcards.biomarker]),
        tiles=lambda wildcards: he_slide_outputs("results/slides/{slide}/tiles.zarr"),
    output:
        png=report(
            "results/cohort/interpret/{biomarker}/smoothgrad.png",
            category="ER/PR/HER2",
            caption="../report/erpr_smoothgrad.rst",
            subcategory="interpretability",
            labels={"biomarker": "{biomarker}", "figure": "SmoothGrad"},
        ),
        csv="results/cohort/interpret/{biomarker}/smoothgrad.csv",
    log:
        "logs/interpret_smoothgrad/{biomarker}.log",
    params:
        code=step_code("interpret_smoothgrad"),
        registry=REGISTRY_PATH,
        model_id=lambda wildcards: ERPR_ACTIVE[wildcards.biomarker],
        interpret=ERPR["interpret"],
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=gpu_request(ERPR["inference"]["device"]),
    conda:
        "../envs/erpr.yaml"
    script:
        "../workflow_scripts/interpret_smoothgrad.py"


rule interpret_clusters:
    input:
        unpack(lambda wildcards: weights_inputs(ERPR_ACTIVE[ERPR["interpret"]["embedding_biomarker"]])),
        predictions=[p for m in ERPR_ACTIVE.values() for p in model_predictions(m)],
        tiles=he_slide_outputs("results/slides/{slide}/tiles.zarr"),
    output:
        hierarchy="results/cohort/interpret/clusters/hierarchy.json",
        clusters="results/cohort/interpret/clusters/clusters.csv",
        dendrogram=report(
            "results/cohort/interpret/clusters/dendrogram.png",
            category="ER/PR/HER2",
            caption="../report/erpr_dendrogram.rst",
            subcategory="interpretability",
            labels={"figure": "cluster dendrogram"},
        ),
        montages=directory("results/cohort/interpret/clusters/montages"),
    log:
        "logs/interpret_clusters/cohort.log",
    params:
        code=step_code("interpret_clusters"),
        registry=REGISTRY_PATH,
        model_id=ERPR_ACTIVE.get(ERPR["interpret"]["embedding_biomarker"]),
        models=ERPR_ACTIVE,
        embedding_biomarker=ERPR["interpret"]["embedding_biomarker"],
        interpret=ERPR["interpret"],
    threads: 2
    resources:
        mem_mb=6000,
        runtime=60,
        gpu=gpu_request(ERPR["inference"]["device"]),
    conda:
        "../envs/erpr.yaml"
    script:
        "../workflow_scripts/interpret_clusters.py"


rule interpret_tcav:
    input:
        unpack(biomarker_weights),
        predictions=lambda wildcards: model_predictions(ERPR_ACTIVE[wildcards.biomarker]),
        tiles=lambda wildcards: he_slide_outputs("results/slides/{slide}/tiles.zarr"),
    output:
        tcav="results/cohort/interpret/{biomarker}/tcav.json",
    log:
        "logs/interpret_tcav/{biomarker}.log",
    params:
        code=step_code("interpret_tcav"),
        registry=REGISTRY_PATH,
        model_id=lambda wildcards: ERPR_ACTIVE[wildcards.biomarker],
        interpret=ERPR["interpret"],
    threads: 2
    resources:
        mem_mb=6000,
        runtime=60,
        gpu=gpu_request(ERPR["inference"]["device"]),
    conda:
        "../envs/erpr.yaml"
    script:
        "../workflow_scripts/interpret_tcav.py"
