"""Models: the registry of model ids, building architectures and loading checked weights."""

from bcpath.models.registry import (
    DEFAULT_ARCHITECTURE,
    MODEL_KINDS,
    ModelSpec,
    build_model,
    load_model,
    load_registry,
    load_weights,
    preprocess,
    save_weights,
    weights_file,
)

__all__ = [
    "DEFAULT_ARCHITECTURE",
    "MODEL_KINDS",
    "ModelSpec",
    "build_model",
    "load_model",
    "load_registry",
    "load_weights",
    "preprocess",
    "save_weights",
    "weights_file",
]
