"""Models: the registry of model ids, building architectures and loading checked weights."""

from bcpath.models.registry import (
    DEFAULT_ARCHITECTURE,
    ModelSpec,
    build_model,
    load_registry,
    load_weights,
    preprocess,
    save_weights,
    weights_file,
)

__all__ = [
    "DEFAULT_ARCHITECTURE",
    "ModelSpec",
    "build_model",
    "load_registry",
    "load_weights",
    "preprocess",
    "save_weights",
    "weights_file",
]
