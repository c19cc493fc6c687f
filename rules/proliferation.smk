# Tumour proliferation on H&E (Shah et al. / TUPAC16): tumour map → mitoses in the tumour →
# hotspot + slide features → grade and proliferation-score models → proliferation.csv.
# Logic: bcpath.proliferation.steps. Registry ids and settings: config.yaml `proliferation`.

PROLIF = config["proliferation"]
PROLIF_REGISTRY_PATH = str(Path(PROLIF.get("registry") or Path(workflow.basedir) / "models" / "registry.yaml").resolve())
try:
    PROLIF_REGISTRY = load_registry(PROLIF_REGISTRY_PATH)
except BcpathError as error:
    raise WorkflowError(str(error)) from None
for _key, _kind in (("tumor_model", "tumor_locnet"), ("mitosis_model", "mitosis_classifier")):
    _id = PROLIF[_key]
    if _id not in PROLIF_REGISTRY:
        raise WorkflowError(f"proliferation.{_key}: model {_id} is not in {PROLIF_REGISTRY_PATH} (entries: {', '.join(PROLIF_REGISTRY)})")
    if PROLIF_REGISTRY[_id].kind != _kind:
        raise WorkflowError(f"proliferation.{_key}: model {_id} is a {PROLIF_REGISTRY[_id].kind}, not a {_kind}; name a {_kind} entry")
if PROLIF["tumor"] == "erpr" and "ER" not in ERPR_ACTIVE:
    raise WorkflowError("proliferation.tumor: erpr needs the ER model to run (erpr.models.ER); use proliferation.tumor: locnet")

LOCNET_ID = PROLIF["tumor_model"]
MITOSIS_ID = PROLIF["mitosis_model"]
_CAN_TRAIN_LOCNET = CAN_TRAIN
_CAN_TRAIN_MITOSIS = _sheet_has("mitoses") and _sheet_has("split", ["train"]) and _sheet_has("split", ["tune"])
_missing = []
if PROLIF["tumor"] == "locnet" and PROLIF_REGISTRY[LOCNET_ID].weights is None and not _CAN_TRAIN_LOCNET:
    _missing.append(f"{LOCNET_ID} (needs annotated train + tune slides)")
if PROLIF_REGISTRY[MITOSIS_ID].weights is None and not _CAN_TRAIN_MITOSIS:
    _missing.append(f"{MITOSIS_ID} (needs a `mitoses` column and train + tune slides)")
PROLIF_ON = PROLIF["enabled"] is not False and not _missing and bool(HE_SLIDES)
if _missing and PROLIF["enabled"] is True:
    raise WorkflowError(f"proliferation: no weights and nothing to train them from: {'; '.join(_missing)}; record weights in the registry or set proliferation.enabled: auto")
if _missing and PROLIF["enabled"] == "auto":
    logger.info(f"bcpath: proliferation skipped: {'; '.join(_missing)} (proliferation.enabled: auto)")
PROLIF_MODELS = _sheet_has("grade") or _sheet_has("proliferation")


def prolif_weights(model_id):
    spec = PROLIF_REGISTRY[model_id]
    if spec.weights is not None:
        return {"weights": str(Path(PROLIF_REGISTRY_PATH).parent / spec.weights)}
    return {"weights": f"results/models/{model_id}/best.pt", "train_json": f"results/models/{model_id}/train.json"}


def tumor_source(wildcards):
    if PROLIF["tumor"] == "erpr":
        return {"predictions": f"results/slides/{wildcards.slide}/predictions/{ERPR_ACTIVE['ER']}.parquet"}
    return prolif_weights(LOCNET_ID)


def proliferation_targets():
    if not PROLIF_ON:
        return []
    targets = [
        *he_slide_outputs("results/slides/{slide}/proliferation/tumor.png"),
        *he_slide_outputs("results/slides/{slide}/proliferation/features.json"),
    ]
    if PROLIF_MODELS:
        targets.append("results/cohort/proliferation.csv")
    return targets


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
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=1,
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
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=1,
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
        gpu=1,
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
        roc=report("results/cohort/proliferation/roc.png", category="Proliferation", subcategory="slide models", caption="../report/proliferation_roc.rst"),
        scatter=report("results/cohort/proliferation/scatter.png", category="Proliferation", subcategory="slide models", caption="../report/proliferation_scatter.rst"),
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
