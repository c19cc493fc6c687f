"""config.yaml against its schema, and nested --config values typed by the schema."""

from __future__ import annotations

import jsonschema
import pytest
import yaml

from bcpath.cohort import load_schema
from bcpath.workflow import coerce_command_line_values
from tests.workflow_helpers import REPO_ROOT


def test_shipped_config_is_valid() -> None:
    config = yaml.safe_load((REPO_ROOT / "config.yaml").read_text())
    jsonschema.validate(config, load_schema("config"))


def test_nested_command_line_strings_become_schema_types() -> None:
    config = {
        "demo": {"n_slides": "24", "seed": "3"},
        "tiling": {"mpp": "1.0", "compression": "jpeg", "tile_px": "256"},
        "tissue": {"exclude_pen": "false"},
        "default_mpp": "null",
        "erpr": {"enabled": "false", "inference": {"stride_px": "64", "device": "cuda"}, "stage2": {"tune": "no"}},
    }
    coerce_command_line_values(config, load_schema("config"))
    assert config["demo"] == {"n_slides": 24, "seed": 3}
    assert config["tiling"] == {"mpp": 1.0, "compression": "jpeg", "tile_px": 256}
    assert config["tissue"]["exclude_pen"] is False
    assert config["default_mpp"] is None
    assert config["erpr"]["enabled"] is False  # untyped enum [auto, true, false]
    assert config["erpr"]["inference"] == {"stride_px": 64, "device": "cuda"}
    assert config["erpr"]["stage2"]["tune"] is False
    jsonschema.validate(config, load_schema("config"))


def test_values_of_the_wrong_type_are_left_for_validation_to_report() -> None:
    config = {"demo": {"n_slides": "many"}, "tiling": {"tile_px": "1.5"}}
    coerce_command_line_values(config, load_schema("config"))
    assert config == {"demo": {"n_slides": "many"}, "tiling": {"tile_px": "1.5"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, load_schema("config"))


def test_untyped_enum_keeps_its_string_members() -> None:
    config = coerce_command_line_values({"erpr": {"enabled": "auto"}}, load_schema("config"))
    assert config["erpr"]["enabled"] == "auto"
    config = coerce_command_line_values({"erpr": {"enabled": "1"}}, load_schema("config"))
    assert config["erpr"]["enabled"] == "1"  # not a member: validation reports it
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, load_schema("config"))


def test_null_on_the_command_line_is_null_for_string_or_null_keys() -> None:
    config = {"cohort": "null", "samples": "~", "erpr": {"registry": "null", "models": {"PR": "null", "ER": "er_demo"}}, "ihc": {"nuclei_model": "NULL"}}
    coerce_command_line_values(config, load_schema("config"))
    assert config == {"cohort": None, "samples": None, "erpr": {"registry": None, "models": {"PR": None, "ER": "er_demo"}}, "ihc": {"nuclei_model": None}}
    jsonschema.validate(config, load_schema("config"))
