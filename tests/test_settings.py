"""Each default in one place: settings dataclass default = config schema default = config.yaml.

A config section reaches the library as a dataclass (bcpath.settings.from_params); the
library functions behind the rules take their keyword defaults from those dataclasses.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml

from bcpath.cohort import load_schema
from bcpath.erpr.training import TrainConfig
from bcpath.errors import BcpathError
from bcpath.ihc.ramcnn import RamcnnSettings, train_ramcnn
from bcpath.nuclei.slide import SegmentationSettings, segment_slide
from bcpath.nuclei.training import NucleiTrainSettings
from bcpath.proliferation.locnet import LocNetTrainConfig
from bcpath.proliferation.mitosis import MitosisTrainConfig
from bcpath.settings import from_params

REPO = Path(__file__).resolve().parents[1]

# (dataclass, section path, keys only the rule files read, fields that are not config keys)
SECTIONS: list[tuple[type, tuple[str, ...], set[str], set[str]]] = [
    (SegmentationSettings, ("nuclei",), {"enabled", "region", "tumor_threshold", "evaluation", "training"}, set()),
    (NucleiTrainSettings, ("nuclei", "training"), {"data"}, set()),
    (RamcnnSettings, ("ihc", "ramcnn"), {"enabled"}, set()),
    (TrainConfig, ("erpr", "training"), {"pretrained"}, {"num_workers", "device", "threads", "augment"}),
    (LocNetTrainConfig, ("proliferation", "locnet_training"), set(), {"weight_decay", "threads"}),
    (MitosisTrainConfig, ("proliferation", "mitosis_training"), {"negatives_per_slide"},
     {"weight_decay", "positive_weight", "atypical_weight", "threads", "max_minutes"}),
]


def _schema_section(path: tuple[str, ...]) -> dict[str, Any]:
    node = load_schema("config")
    for key in path:
        node = node["properties"][key]
    return node["properties"]


def _config_section(path: tuple[str, ...]) -> dict[str, Any]:
    node = yaml.safe_load((REPO / "config.yaml").read_text())
    for key in path:
        node = node[key]
    return node


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize(("cls", "path", "rule_keys", "library_fields"), SECTIONS, ids=lambda v: getattr(v, "__name__", None))
def test_dataclass_defaults_equal_schema_and_config(cls: type, path: tuple[str, ...], rule_keys: set[str], library_fields: set[str]) -> None:
    schema, config = _schema_section(path), _config_section(path)
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    # every schema key is a field or read by the rule files; every field is a schema key or library-only
    assert set(schema) - rule_keys == set(fields) - library_fields
    for name in set(fields) - library_fields:
        default = _plain(fields[name])
        assert default == schema[name].get("default"), f"{cls.__name__}.{name}: dataclass {default!r} vs schema {schema[name].get('default')!r}"
        assert default == config[name], f"{cls.__name__}.{name}: dataclass {default!r} vs config.yaml {config[name]!r}"
    # the section as the rule passes it parses to the defaults
    assert from_params(cls, config) == cls()


def test_library_functions_take_the_settings_defaults() -> None:
    segment = inspect.signature(segment_slide).parameters
    assert segment["tile_px"].default == SegmentationSettings.tile_px == 512
    assert segment["overlap"].default == SegmentationSettings.overlap == 0.25
    assert segment["model_mpp"].default == SegmentationSettings.mpp
    ramcnn = inspect.signature(train_ramcnn).parameters
    for name in ("epochs", "batch_size", "lr", "n_dla_labels", "dla_sigma", "size"):
        assert ramcnn[name].default == getattr(RamcnnSettings, name), name


def test_from_params_types_and_ignores_rule_keys() -> None:
    settings = from_params(RamcnnSettings, {"enabled": "auto", "epochs": "3", "lr": 1, "device": None})
    assert settings == RamcnnSettings(epochs=3, lr=1.0)
    assert isinstance(settings.lr, float)
    training = from_params(NucleiTrainSettings, {"data": ["x"], "val_organs": ["brain"], "max_minutes": 5})
    assert training.val_organs == ("brain",) and training.max_minutes == 5.0
    assert from_params(TrainConfig, {"epochs": 2}, threads=3) == TrainConfig(epochs=2, threads=3)
    with pytest.raises(BcpathError, match="RamcnnSettings.epochs"):
        from_params(RamcnnSettings, {"epochs": "many"})
