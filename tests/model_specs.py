"""Small registry entries (ModelSpec) for tests: untrained models, no weights file."""

from __future__ import annotations

from collections.abc import Sequence

from bcpath.models.registry import ModelSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
THREE_CLASSES = ("positive", "negative", "non-tumor")


def test_spec(
    patch_px: int,
    *,
    model_id: str = "tiny",
    architecture: str = "resnet18",
    classes: Sequence[str] = THREE_CLASSES,
    mpp: float = 2.0,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> ModelSpec:
    """A 3-class entry at 2 µm/px with ImageNet normalisation unless told otherwise."""
    return ModelSpec(
        model_id=model_id, architecture=architecture, classes=tuple(classes), mpp=mpp,
        patch_px=patch_px, mean=mean, std=std, weights=None, sha256=None, licence="MIT",
        training_command="none (test)",
    )


test_spec.__test__ = False  # type: ignore[attr-defined]  # a helper, not a pytest test
