"""Cohorts: slides found in a folder, or listed in a validated sample sheet.

Both give a pandas DataFrame indexed by ``slide_id`` with at least ``path`` (absolute) and
the optional columns of the sample-sheet schema (``schemas/samples.schema.yaml``).
"""

from __future__ import annotations

import logging
import os
import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from bcpath.errors import SampleSheetError
from bcpath.labels import BIOMARKERS
from bcpath.wsi import SLIDE_EXTENSIONS

logger = logging.getLogger(__name__)

OPTIONAL_COLUMNS = (
    "mpp", "stain", *BIOMARKERS, "grade", "proliferation", "split",
    "patient_id", "annotations", "tissue_mask", "core_map", "core_scores", "mitoses",
)
REQUIRED_COLUMNS = ("slide_id", "path")
_NUMBER_COLUMNS = {"mpp": float, "grade": int, "proliferation": float}
_PATH_COLUMNS = ("path", "annotations", "tissue_mask", "core_map", "core_scores", "mitoses")
_STAIN_ALIASES = {"he": "HE", "h&e": "HE", "h-e": "HE", "ihc": "IHC", "dab": "IHC"}
_STATUS_ALIASES = {"positive": "positive", "pos": "positive", "+": "positive", "negative": "negative", "neg": "negative", "-": "negative"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@cache
def load_schema(name: str) -> dict[str, Any]:
    """A JSON Schema shipped with the package (``config``, ``samples`` or ``registry``)."""
    import yaml

    text = resources.files("bcpath").joinpath("schemas", f"{name}.schema.yaml").read_text()
    return dict(yaml.safe_load(text))


def safe_slide_id(file_name: str) -> str:
    """Slide id from a file name: extension(s) dropped, unsafe characters → '_'.

    ``"Case 12 (HE).svs"`` → ``"Case_12_HE"``; ``"x.ome.tiff"`` → ``"x"``.
    """
    stem = Path(file_name).name
    lower = stem.lower()
    for suffix in (".ome.tiff", ".ome.tif", *SLIDE_EXTENSIONS):
        if lower.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    cleaned = _UNSAFE.sub("_", stem).strip("._-")
    return cleaned or "slide"


def discover_slides(directory: str | os.PathLike[str]) -> Any:
    """Every slide file under ``directory`` (recursively, hidden files skipped).

    Returns:
        DataFrame indexed by slide_id with column ``path`` (absolute), sorted by id.

    Raises:
        SampleSheetError: no folder, no slides, or two files giving the same slide id.
    """
    import pandas as pd

    root = Path(directory).expanduser().resolve()
    if not root.is_dir():
        raise SampleSheetError(f"cohort folder not found: {root}; pass an existing folder with --config cohort=DIR")
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or not name.lower().endswith(SLIDE_EXTENSIONS):
                continue
            path = Path(dirpath) / name
            slide_id = safe_slide_id(name)
            if slide_id in found:
                raise SampleSheetError(
                    f"cohort {root}: {found[slide_id]} and {path} both give slide id '{slide_id}'; "
                    "rename one file, or list the slides in a sample sheet (--config samples=FILE.tsv) with distinct slide_id values"
                )
            found[slide_id] = path
    if not found:
        raise SampleSheetError(
            f"cohort {root}: no slide files found (looked for {', '.join(SLIDE_EXTENSIONS)}, recursively); "
            "check the folder, or use a sample sheet with --config samples=FILE.tsv"
        )
    table = pd.DataFrame({"slide_id": list(found), "path": [str(p) for p in found.values()]})
    for column in OPTIONAL_COLUMNS:
        table[column] = None
    table["stain"] = "HE"
    return table.set_index("slide_id", drop=False).sort_index()


def _normalise_cell(column: str, value: str, where: str) -> Any:
    value = value.strip()
    if value == "" or value.upper() in {"NA", "N/A", "NAN", "NONE"}:
        return None
    if column in _NUMBER_COLUMNS:
        try:
            number = float(value)
        except ValueError:
            raise SampleSheetError(f"{where}: column {column} must be a number, found {value!r}") from None
        return int(number) if _NUMBER_COLUMNS[column] is int and number.is_integer() else number
    if column == "stain":
        return _STAIN_ALIASES.get(value.lower(), value)
    if column in BIOMARKERS:
        return _STATUS_ALIASES.get(value.lower(), value)
    if column == "split":
        return value.lower()
    return value


def read_sample_sheet(path: str | os.PathLike[str], check_files: bool = True) -> Any:
    """Read and validate a tab-separated sample sheet.

    Relative paths (path, annotations, tissue_mask) are resolved against the sheet's folder.

    Returns:
        DataFrame indexed by slide_id with every schema column (None where not given).

    Raises:
        SampleSheetError: missing column, invalid value (names row and slide), duplicate
            slide id, or a slide file that does not exist.
    """
    import jsonschema
    import pandas as pd

    sheet = Path(path).expanduser().resolve()
    if not sheet.is_file():
        raise SampleSheetError(f"sample sheet not found: {sheet}; pass an existing TSV with --config samples=FILE.tsv")
    raw = pd.read_csv(sheet, sep="\t", dtype=str, keep_default_na=False, comment=None)
    raw.columns = [c.strip() for c in raw.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise SampleSheetError(
            f"sample sheet {sheet}: missing column(s) {', '.join(missing)} (found: {', '.join(raw.columns)}); "
            "the header must include slide_id and path, tab-separated"
        )
    unknown = [c for c in raw.columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        logger.info("sample sheet %s: extra columns kept as they are: %s", sheet, ", ".join(unknown))
    schema = load_schema("samples")
    validator = jsonschema.Draft202012Validator(schema)
    records = []
    for index, row in raw.iterrows():
        line = int(index) + 2  # header is line 1
        where = f"sample sheet {sheet}, line {line} (slide {row['slide_id'] or '?'})"
        record = {c: _normalise_cell(c, row[c], where) for c in raw.columns if c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS}
        for column in OPTIONAL_COLUMNS:
            record.setdefault(column, None)
        if record["stain"] is None:
            record["stain"] = "HE"
        errors = sorted(validator.iter_errors({k: v for k, v in record.items() if k in schema["properties"]}), key=str)
        if errors:
            error = errors[0]
            field = ".".join(str(p) for p in error.path) or "row"
            hint = schema["properties"].get(field, {}).get("description", "")
            allowed = schema["properties"].get(field, {}).get("enum")
            detail = f"allowed: {', '.join(str(a) for a in allowed if a is not None)}" if allowed else hint
            raise SampleSheetError(f"{where}: column {field}: {error.message}; {detail}")
        for column in _PATH_COLUMNS:
            if record.get(column):
                candidate = Path(record[column]).expanduser()
                record[column] = str(candidate if candidate.is_absolute() else (sheet.parent / candidate).resolve())
        if check_files and not Path(record["path"]).exists():
            raise SampleSheetError(f"{where}: slide file not found: {record['path']}; fix the path column (relative paths are read from {sheet.parent})")
        records.append(record)
    if not records:
        raise SampleSheetError(f"sample sheet {sheet}: no rows; add one row per slide")
    table = pd.DataFrame(records, dtype=object)  # keeps None for empty cells
    duplicated = table["slide_id"][table["slide_id"].duplicated()].unique()
    if len(duplicated):
        raise SampleSheetError(f"sample sheet {sheet}: duplicate slide_id {', '.join(duplicated)}; each slide needs its own id")
    return table.set_index("slide_id", drop=False)


def load_cohort(cohort: str | None, samples: str | None) -> Any:
    """The cohort table from a sample sheet (preferred) or a folder."""
    if samples:
        return read_sample_sheet(samples)
    if cohort:
        return discover_slides(cohort)
    raise SampleSheetError("no cohort given: set --config cohort=DIR or --config samples=FILE.tsv")


def optional_value(table: Any, slide_id: str, column: str) -> Any:
    """A cell as a plain Python value, None when empty/missing/NaN."""
    import math

    if column not in table.columns:
        return None
    value = table.at[slide_id, column]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value
