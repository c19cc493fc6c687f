"""Model registry: validation, building, checked weights, safe loading (tiny models on CPU)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import torch
import yaml

from bcpath.errors import BcpathError
from bcpath.models import (
    ModelSpec,
    build_model,
    load_registry,
    load_weights,
    preprocess,
    save_weights,
)

REGISTRY = Path(__file__).resolve().parents[1] / "models" / "registry.yaml"
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _small_spec(**changes: object) -> ModelSpec:
    """A 3-class resnet18 entry: small enough for fast save/load round trips."""
    spec = load_registry(REGISTRY)["er_demo"]
    fields: dict[str, object] = {"architecture": "resnet18", **changes}
    return dataclasses.replace(spec, **fields)  # type: ignore[arg-type]


def _write_registry(tmp_path: Path, mutate) -> Path:
    document = yaml.safe_load(REGISTRY.read_text())
    mutate(document["models"])
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_registry_loads_and_validates() -> None:
    all_specs = load_registry(REGISTRY)
    specs = {k: v for k, v in all_specs.items() if v.kind == "patch_classifier"}
    assert list(specs) == ["er_demo", "pr_demo", "her2_demo"]
    # the proliferation system's own nets are registry kinds too
    assert all_specs["locnet_demo"].kind == "tumor_locnet" and all_specs["locnet_demo"].architecture == "locnet"
    assert all_specs["mitosis_demo"].kind == "mitosis_classifier" and all_specs["mitosis_demo"].mpp == 0.5
    for model_id, spec in specs.items():
        marker = model_id.split("_")[0].upper()
        assert spec.model_id == model_id
        assert spec.architecture == "mobilenet_v3_small"  # CPU-sized demo entries (registry header)
        assert spec.classes == (
            f"{marker}-positive invasive carcinoma",
            f"{marker}-negative invasive carcinoma",
            "non-tumor",
        )
        assert (spec.mpp, spec.patch_px) == (2.0, 128)
        assert spec.training_command == f"snakemake --cores 2 results/models/{model_id}/best.pt"
        assert preprocess(spec) == IMAGENET
        assert spec.weights is None and spec.sha256 is None
        assert spec.licence == "MIT" and spec.training_command.startswith("snakemake")
    with pytest.raises(dataclasses.FrozenInstanceError):
        specs["er_demo"].mpp = 1.0  # type: ignore[misc]


def _set(entry: str, field: str, value: object):
    def mutate(models: dict) -> None:
        models[entry][field] = value

    return mutate


def _drop(entry: str, field: str):
    def mutate(models: dict) -> None:
        del models[entry][field]

    return mutate


@pytest.mark.parametrize(
    "mutate, entry, field",
    [
        (_set("pr_demo", "mpp", -2.0), "pr_demo", "mpp"),
        (_set("her2_demo", "classes", ["a"]), "her2_demo", "classes"),
        (_set("er_demo", "std", [0.2, 0.2, 0.0]), "er_demo", "std.2"),
        (_drop("pr_demo", "licence"), "pr_demo", "licence"),
        (_set("er_demo", "weights", "er_demo/weights.pt"), "er_demo", "sha256"),
        (_set("er_demo", "weights", "../outside.pt"), "er_demo", "weights"),
        (_set("her2_demo", "colour", "pink"), "her2_demo", "colour"),
    ],
)
def test_bad_entry_names_file_entry_and_field(tmp_path: Path, mutate, entry: str, field: str) -> None:
    path = _write_registry(tmp_path, mutate)
    with pytest.raises(BcpathError) as info:
        load_registry(path)
    message = str(info.value)
    assert str(path) in message
    assert f"entry {entry}" in message
    assert f"field {field}" in message


def test_missing_registry_file(tmp_path: Path) -> None:
    with pytest.raises(BcpathError, match="model registry not found"):
        load_registry(tmp_path / "nope.yaml")


def test_save_load_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trained = build_model(_small_spec())
    sha = save_weights(trained, tmp_path / "er" / "weights.pt")
    spec = _small_spec(weights="er/weights.pt", sha256=sha)
    loaded = load_weights(build_model(spec), spec, tmp_path)
    batch = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(trained(batch), loaded(batch))
    assert not list(tmp_path.glob("er/.*tmp*"))  # atomic write leaves no temporary file


def test_sha256_mismatch_names_model_file_and_both_digests(tmp_path: Path) -> None:
    actual = save_weights(build_model(_small_spec()), tmp_path / "w.pt")
    expected = "0" * 64
    spec = _small_spec(weights="w.pt", sha256=expected)
    with pytest.raises(BcpathError) as info:
        load_weights(build_model(spec), spec, tmp_path)
    message = str(info.value)
    for part in ("er_demo", str(tmp_path / "w.pt"), expected, actual, "training command", "registry"):
        assert part in message


def test_missing_weights_file_and_untrained_entry(tmp_path: Path) -> None:
    spec = _small_spec(weights="gone.pt", sha256="1" * 64)
    with pytest.raises(BcpathError, match=r"er_demo: weights file not found: .*gone\.pt"):
        load_weights(build_model(spec), spec, tmp_path)
    untrained = _small_spec()  # weights: null, as in the shipped registry
    with pytest.raises(BcpathError, match=r"no weights file yet.*results/models/er_demo/best\.pt"):
        load_weights(build_model(untrained), untrained, tmp_path)


def test_pretrained_checkpoint_loads_backbone_and_skips_head(tmp_path: Path, caplog) -> None:
    torch.manual_seed(1)
    ten_class = build_model(_small_spec(classes=tuple(f"c{i}" for i in range(10))))
    checkpoint = tmp_path / "imagenet_like.pt"
    torch.save({"state_dict": ten_class.state_dict()}, checkpoint)  # Lightning-style wrapper
    spec = _small_spec()
    with caplog.at_level(logging.INFO, logger="bcpath.models.registry"):
        model = build_model(spec, pretrained_path=checkpoint)
    state = model.state_dict()
    assert torch.equal(state["conv1.weight"], ten_class.state_dict()["conv1.weight"])
    assert torch.equal(state["layer4.1.bn2.running_var"], ten_class.state_dict()["layer4.1.bn2.running_var"])
    assert state["fc.weight"].shape == (3, 512)
    assert "fc.weight" in caplog.text and "fc.bias" in caplog.text and "skipped" in caplog.text


def test_pretrained_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    checkpoint = tmp_path / "other.pt"
    torch.save({"nothing.like.resnet": torch.zeros(2)}, checkpoint)
    with pytest.raises(BcpathError, match="shares no tensor"):
        build_model(_small_spec(), pretrained_path=checkpoint)
    with pytest.raises(BcpathError, match="not found"):
        build_model(_small_spec(), pretrained_path=tmp_path / "absent.pt")


RAN: list[str] = []


def _side_effect() -> str:
    RAN.append("unpickled")
    return "boom"


class _Payload:
    """Unpickling this runs code: exactly what weights_only=True must refuse."""

    def __reduce__(self):
        return (_side_effect, ())


def test_pickled_object_is_refused_and_torch_load_is_weights_only(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"fc.weight": torch.zeros(1), "payload": _Payload()}, path)
    from bcpath.wsi.reader import file_sha256

    spec = _small_spec(weights="evil.pt", sha256=file_sha256(path))
    with pytest.raises(BcpathError, match="weights_only=True"):
        load_weights(build_model(spec), spec, tmp_path)
    with pytest.raises(BcpathError, match="weights_only=True"):
        build_model(spec, pretrained_path=path)
    assert RAN == []

    calls: list[dict] = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    good = _small_spec(weights="good.pt", sha256=save_weights(build_model(spec), tmp_path / "good.pt"))
    load_weights(build_model(good), good, tmp_path)
    build_model(good, pretrained_path=tmp_path / "good.pt")
    assert len(calls) == 2
    assert all(c.get("weights_only") is True and c.get("map_location") == "cpu" for c in calls)


def test_unknown_architecture(tmp_path: Path) -> None:
    with pytest.raises(BcpathError, match="unknown architecture 'resnet9000'"):
        build_model(_small_spec(architecture="resnet9000"))


def test_inception_v3_has_a_three_class_head() -> None:
    spec = dataclasses.replace(load_registry(REGISTRY)["her2_demo"], architecture="inception_v3", patch_px=512)
    model = build_model(spec)
    assert isinstance(model.fc, torch.nn.Linear) and model.fc.out_features == 3
    assert model.AuxLogits is None
    assert not model.training
    with torch.no_grad():
        logits = model(torch.rand(1, 3, 299, 299))
    assert logits.shape == (1, 3)


def test_identical_weights_give_identical_files(tmp_path) -> None:
    import torch

    from bcpath.models import save_weights

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    first = save_weights(model, tmp_path / "a" / "weights.pt")
    second = save_weights(model, tmp_path / "b" / "other_name.pt")
    assert first == second


def test_model_folder_inputs(tmp_path: Path) -> None:
    from bcpath.models.registry import model_folder_inputs

    folder = tmp_path / "unet"
    folder.mkdir()
    with pytest.raises(BcpathError, match=r"ihc.nuclei_model: .* is not a model folder \(best.pt \+ train.json\); give one"):
        model_folder_inputs(folder, "ihc.nuclei_model", "give one")
    for name in ("best.pt", "train.json", "log.csv"):
        (folder / name).write_text("x")
    assert model_folder_inputs(folder, "nuclei.model") == [str(folder / "best.pt"), str(folder / "train.json")]
    (folder / "stain.json").write_text("{}")
    expected = [str(folder / "best.pt"), str(folder / "train.json"), str(folder / "stain.json")]
    assert model_folder_inputs(folder, "nuclei.model") == expected
    assert model_folder_inputs(folder / "best.pt", "nuclei.model") == expected  # the weights file itself
