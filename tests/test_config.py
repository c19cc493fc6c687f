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
    }
    coerce_command_line_values(config, load_schema("config"))
    assert config["demo"] == {"n_slides": 24, "seed": 3}
    assert config["tiling"] == {"mpp": 1.0, "compression": "jpeg", "tile_px": 256}
    assert config["tissue"]["exclude_pen"] is False
    assert config["default_mpp"] is None
    jsonschema.validate(config, load_schema("config"))


def test_values_of_the_wrong_type_are_left_for_validation_to_report() -> None:
    config = {"demo": {"n_slides": "many"}, "tiling": {"tile_px": "1.5"}}
    coerce_command_line_values(config, load_schema("config"))
    assert config == {"demo": {"n_slides": "many"}, "tiling": {"tile_px": "1.5"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, load_schema("config"))
