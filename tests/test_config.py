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


def _shipped() -> dict:
    return yaml.safe_load((REPO_ROOT / "config.yaml").read_text())


@pytest.mark.parametrize(
    "section, key, value, expected",
    [
        ("tiling", "mppp", 1, "config: unknown key tiling.mppp (did you mean tiling.mpp?)"),
        ("tissue", "min_saturaton", 5, "config: unknown key tissue.min_saturaton (did you mean tissue.min_saturation?)"),
        ("demo", "n_slide", 4, "config: unknown key demo.n_slide (did you mean demo.n_slides?)"),
        ("erpr", "trainig", {}, "config: unknown key erpr.trainig (did you mean erpr.training?)"),
        ("tiling", "tile_px", 100_000_000, "config tiling.tile_px: 100000000 is not allowed; allowed: integer ≥ 16 and ≤ 8192"),
        ("tiling", "compression", "losless", "config tiling.compression: 'losless' is not allowed; allowed: lossless, jpeg; did you mean lossless?"),
        ("demo", "n_slides", 4, "config demo.n_slides: 4 is not allowed; allowed: integer ≥ 8 and ≤ 1000"),
    ],
)
def test_each_config_problem_is_one_line_with_the_key_path_and_a_hint(section, key, value, expected) -> None:
    from bcpath.workflow import config_problems

    config = _shipped()
    config[section][key] = value
    problems = config_problems(config, load_schema("config"))
    assert len(problems) == 1 and problems[0].startswith(expected), problems
    assert "\n" not in problems[0]


def test_every_section_is_closed_and_top_level_typos_and_both_inputs_are_reported() -> None:
    from bcpath.workflow import closed_schema, config_problems

    schema = closed_schema(load_schema("config"))

    def objects(node, path=""):
        if isinstance(node, dict):
            if "properties" in node:
                yield path, node
            for key, value in node.items():
                yield from objects(value, f"{path}/{key}")

    found = list(objects(schema))
    assert len(found) > 15 and all(node["additionalProperties"] is False for _, node in found)
    config = _shipped()
    config["tilling"] = {"mpp": 1.0}
    config["cohort"], config["samples"] = "/data/cohort", "/data/samples.tsv"
    problems = config_problems(config, load_schema("config"))
    assert problems == [
        "config: unknown key tilling (did you mean tiling?)",
        "config: cohort (/data/cohort) and samples (/data/samples.tsv) are both set; give one: cohort=DIR (every slide in a folder) or samples=FILE.tsv (a sample sheet)",
    ]
    assert config_problems(_shipped(), load_schema("config")) == []
