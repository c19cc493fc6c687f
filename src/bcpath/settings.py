"""Typed settings: a config section reaches the library as a dataclass, parsed once.

Each default lives in one place: the config schema (``schemas/config.schema.yaml``, which
fills in config.yaml's values). The library's settings dataclasses repeat those defaults
(``tests/test_settings.py`` asserts dataclass default = schema default = config.yaml value),
and a rule-facing step turns its ``params`` section into one with :func:`from_params` instead
of reading keys with fallbacks of its own.

The dataclasses live next to the code they configure:

- ``nuclei`` → :class:`bcpath.nuclei.slide.SegmentationSettings`
- ``nuclei.training`` → :class:`bcpath.nuclei.training.NucleiTrainSettings`
- ``ihc.ramcnn`` → :class:`bcpath.ihc.ramcnn.RamcnnSettings`
- ``erpr.training`` → :class:`bcpath.erpr.training.TrainConfig`
- ``erpr.inference`` / ``erpr.stage2`` / ``erpr.evaluation`` → :mod:`bcpath.steps.erpr`
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from bcpath.errors import BcpathError

T = TypeVar("T")


def _coerce(kind: Any, value: Any, what: str) -> Any:
    """``value`` as the annotated type (int, float, bool, str, tuples, ``X | None``)."""
    if value is None:
        return None
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        return _coerce(options[0], value, what) if len(options) == 1 else value
    try:
        if origin is tuple:
            return tuple(value)
        if kind is bool:
            return bool(value)
        if kind in (int, float, str):
            return kind(value)
    except (TypeError, ValueError) as exc:
        raise BcpathError(f"{what}: {value!r} is not a valid {getattr(kind, '__name__', kind)}") from exc
    return value


def from_params(cls: type[T], section: Mapping[str, Any] | None, **overrides: Any) -> T:
    """A settings dataclass from a config section (rule params), keys typed by the fields.

    Keys that are not fields (e.g. ``enabled`` or ``data``, which the rule files use) are
    ignored; missing keys take the dataclass default (= the schema default). ``overrides``
    (e.g. ``threads``) are passed as they are.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {
        key: _coerce(hints[key], value, f"{cls.__name__}.{key}")
        for key, value in dict(section or {}).items()
        if key in names
    }
    values.update(overrides)
    return cls(**values)
