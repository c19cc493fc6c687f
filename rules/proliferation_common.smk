# Proliferation set-up shared by rules/proliferation.smk: the registry entries it uses, whether
# it runs, and the input functions. Parse-time checks stop the run with one message.

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
