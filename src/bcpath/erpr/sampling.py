"""Training patches for stage 1 of ER/PR/HER2: positions inside QuPath regions, and a dataset.

Labels (Gamble et al. 2021): a region feature gives, for one biomarker, the label
``bcpath.labels.region_label(feature, biomarker)`` ("positive", "negative", "non-tumor" or None
= skip); ``LABEL_ORDER`` maps those to the model's class indices 0, 1, 2
(biomarker-positive tumor, biomarker-negative tumor, non-tumor), the order of the ``p_0..p_2``
columns of ``predictions/{model}.parquet``.

Region classes other than the three of the biomarker (a tumor feature written for another
biomarker, unclassified or foreign classes) are ignored: they give no patches, and their area
is not counted as inside any class.

Acceptance rule of a patch: its centre lies inside a region of the class, and at least
``min_inside`` (default ``MIN_INSIDE_FRACTION``, 75 %) of the patch square lies inside the
union of that class's regions. Centres are uniform over that union, so the patches of a class
fall in its regions in proportion to their area (less the border strip where a square does
not fit). Regions of one class that touch therefore count as one; a patch straddling a
tumor/stroma border by more than a quarter is never drawn, so labels stay clean at the cost
of under-sampling region borders.

Coordinates are level-0 slide px (OpenSlide/QuPath convention), like the annotations and
``predictions/{model}.parquet``: ``x0, y0`` is the patch's top-left corner, the square is
``patch_level0_px`` wide (``patch_px · mpp / slide_mpp``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bcpath.errors import BcpathError

if TYPE_CHECKING:
    import pandas as pd
    import torch

logger = logging.getLogger(__name__)

LABEL_ORDER: tuple[str, ...] = ("positive", "negative", "non-tumor")
"""Region labels in model class order: 0 biomarker-positive tumor, 1 negative tumor, 2 non-tumor."""

MIN_INSIDE_FRACTION = 0.75
"""Least fraction of a patch square that must lie inside its class's regions."""

JITTER = 0.1
"""Brightness, contrast and saturation factors are drawn uniformly from [1 − JITTER, 1 + JITTER]."""

HUE_JITTER = 0.02
"""Hue shift drawn uniformly from [−HUE_JITTER, HUE_JITTER] turns of the colour wheel."""

_BATCH_FACTOR = 8  # candidates drawn per wanted patch per round of rejection sampling
_MAX_ROUNDS = 50


def _class_geometries(features: Sequence[dict[str, Any]], biomarker: str, classes: Sequence[str]) -> list[Any]:
    """Union of the region geometries of each class (None where a class has no region)."""
    import shapely
    from shapely.geometry import shape

    from bcpath.labels import region_label

    parts: list[list[Any]] = [[] for _ in classes]
    for feat in features:
        label = region_label(feat, biomarker)
        if label is None or label not in classes or not feat.get("geometry"):
            continue
        geometry = shape(feat["geometry"])
        if not geometry.is_valid:
            geometry = shapely.make_valid(geometry)
        if geometry.area > 0:
            parts[list(classes).index(label)].append(geometry)
    unions = [shapely.union_all(p) if p else None for p in parts]
    for geometry in unions:
        if geometry is not None:
            shapely.prepare(geometry)
    return unions


def sample_patch_positions(
    features: Sequence[dict[str, Any]],
    biomarker: str,
    classes: Sequence[str] = LABEL_ORDER,
    n_per_class: int = 64,
    patch_level0_px: float = 512.0,
    rng: np.random.Generator | None = None,
    *,
    min_inside: float = MIN_INSIDE_FRACTION,
) -> pd.DataFrame:
    """Random patch positions inside the labelled regions of one slide.

    Centres are drawn uniformly over each class's region union (rejection sampling in its
    bounding box), i.e. across the regions of a class in proportion to their area; a
    candidate is kept when its centre is inside and at least ``min_inside`` of its square is
    inside (module docstring). Patches may overlap. Features whose class is none of the
    biomarker's three labels are ignored.

    Args:
        features: QuPath GeoJSON features of the slide (``bcpath.geojson.read_geojson``),
            level-0 px.
        biomarker: "ER", "PR" or "HER2"; picks the label of each feature via
            ``bcpath.labels.region_label``.
        classes: region labels in model class order (default ``LABEL_ORDER``); the output
            ``label`` is the index in this sequence.
        n_per_class: patches wanted per class. A class without regions gives none; a class
            whose regions are too small for the square gives fewer (logged).
        patch_level0_px: side of the patch square in level-0 px.
        rng: numpy Generator; the same generator state and features give the same positions
            (None = ``default_rng(0)``).
        min_inside: least fraction (0 < f ≤ 1) of the patch square inside the class's regions.

    Returns:
        DataFrame with columns x0, y0 (int64, top-left corner in level-0 px) and label
        (int64 class index), grouped by label, ``n_per_class`` rows per class at most.
    """
    import pandas as pd
    import shapely

    if n_per_class < 0 or patch_level0_px <= 0:
        raise ValueError(f"n_per_class must be ≥ 0 and patch_level0_px > 0, got {n_per_class}, {patch_level0_px}")
    if not 0.0 < min_inside <= 1.0:
        raise ValueError(f"min_inside must be in (0, 1], got {min_inside}")
    unknown = [c for c in classes if c not in LABEL_ORDER]
    if unknown:
        raise ValueError(f"classes must be region labels {LABEL_ORDER}, got {unknown}")
    rng = rng if rng is not None else np.random.default_rng(0)
    half = patch_level0_px / 2.0
    need_area = min_inside * patch_level0_px**2
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for index, geometry in enumerate(_class_geometries(features, biomarker, classes)):
        if geometry is None or n_per_class == 0:
            continue
        minx, miny, maxx, maxy = geometry.bounds
        got_x: list[np.ndarray] = []
        got_y: list[np.ndarray] = []
        count = 0
        for _ in range(_MAX_ROUNDS):
            n = max(16, _BATCH_FACTOR * (n_per_class - count))
            cx = rng.uniform(minx, maxx, n)
            cy = rng.uniform(miny, maxy, n)
            inside = shapely.contains_xy(geometry, cx, cy)
            cx, cy = cx[inside], cy[inside]
            if len(cx):
                squares = shapely.box(cx - half, cy - half, cx + half, cy + half)
                covered = shapely.area(shapely.intersection(squares, geometry)) >= need_area
                cx, cy = cx[covered], cy[covered]
            take = min(len(cx), n_per_class - count)
            got_x.append(cx[:take])
            got_y.append(cy[:take])
            count += take
            if count >= n_per_class:
                break
        if count < n_per_class:
            logger.warning(
                "%s class %s: only %d of %d patches fit (regions small for a %.0f px square); using those",
                biomarker, classes[index], count, n_per_class, patch_level0_px,
            )
        centre_x = np.concatenate(got_x) if got_x else np.zeros(0)
        centre_y = np.concatenate(got_y) if got_y else np.zeros(0)
        xs.append(np.round(centre_x - half).astype(np.int64))
        ys.append(np.round(centre_y - half).astype(np.int64))
        labels.append(np.full(len(centre_x), index, dtype=np.int64))
    empty = np.zeros(0, dtype=np.int64)
    return pd.DataFrame(
        {
            "x0": np.concatenate(xs) if xs else empty,
            "y0": np.concatenate(ys) if ys else empty,
            "label": np.concatenate(labels) if labels else empty,
        }
    )


_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def color_jitter(patch: torch.Tensor, brightness: float, contrast: float, saturation: float, hue: float) -> torch.Tensor:
    """Colour jitter of one (3, H, W) uint8 RGB patch, as torchvision's ColorJitter factors.

    Brightness multiplies, contrast blends with the patch's mean grey, saturation blends each
    pixel with its grey, hue rotates the chroma plane of YIQ by ``hue`` turns (a linear
    approximation of an HSV hue shift; fine for the ±0.02 used here). Done in float32 with one
    3×3 matrix (saturation and hue) in numpy instead of torchvision's HSV round trip, which costs tens
    of ms per patch on CPU.

    Returns:
        (3, H, W) uint8, rounded and clipped to 0..255.
    """
    import torch

    angle = 2.0 * np.pi * hue
    rotate = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(angle), -np.sin(angle)], [0.0, np.sin(angle), np.cos(angle)]])
    grey = _RGB_TO_YIQ[0]
    # Saturation in RGB: s·x + (1 − s)·grey(x)·1; then hue in YIQ.
    saturate = saturation * np.eye(3) + (1.0 - saturation) * np.outer(np.ones(3), grey)
    matrix = _YIQ_TO_RGB @ rotate @ _RGB_TO_YIQ @ saturate * brightness
    # numpy, not torch: on a (3, P, P) patch torch's intra-op thread pool costs more than the work.
    x = patch.numpy().astype(np.float32)
    x = (matrix.astype(np.float32) @ x.reshape(3, -1)).reshape(x.shape)
    np.clip(x, 0.0, 255.0, out=x)
    mean = float((grey.astype(np.float32) @ x.reshape(3, -1)).mean())
    x = (x - mean) * np.float32(contrast) + np.float32(mean)
    return torch.from_numpy(np.clip(np.rint(x), 0.0, 255.0).astype(np.uint8))


class PatchSampleDataset:
    """Labelled training patches read from slides, as a torch map-style dataset.

    ``dataset[i]`` is ``(patch, label)``: patch a (3, P, P) uint8 RGB tensor read with
    ``Slide.read_region(x0, y0, P, P, mpp)`` (P = ``patch_px``, ``mpp`` µm/px; normalisation
    happens on the device, as in :class:`bcpath.erpr.inference.PatchDataset`), label an int.

    With ``augment=True`` each read gets a horizontal and a vertical flip each with p = 0.5,
    a rotation by k·90° (k uniform in 0..3) and a colour jitter (brightness, contrast,
    saturation factors in [0.9, 1.1], hue ±0.02 turn; :func:`color_jitter`). The draws come
    from:

    * ``seed`` given: a ``torch.Generator`` seeded from ``(seed, epoch, index)``
      (``numpy.random.SeedSequence``), so ``dataset[i]`` is a pure function of (seed, epoch,
      i), whichever worker or order reads it; ``set_epoch(e)`` before each epoch gives fresh
      augmentations per epoch (in DataLoader workers, set it before the iterator is created,
      or use ``persistent_workers=False``, so the workers get the new epoch).
    * ``seed=None``: torch's global generator (seeded per DataLoader worker from the loader's
      generator, so runs with a seeded loader repeat).

    With ``augment=False`` the patch is exactly what ``read_region`` returns.

    Slides are opened on first use in each process (the dataset pickles without them).

    Args:
        slide_paths: slide_id → slide file.
        positions: one row per patch with columns slide_id, x0, y0 (level-0 px, top-left) and
            label (int class index).
        mpp: µm/px to read at (the model's).
        patch_px: patch side P in px at ``mpp``.
        augment: apply the random augmentation above.
        slide_mpp: optional slide_id → level-0 µm/px from the sample sheet, for files that
            carry none (passed to ``open_slide(mpp=...)``).
        seed: augmentation seed (see above); None = torch's global generator.
    """

    def __init__(
        self,
        slide_paths: Mapping[str, str | os.PathLike[str]],
        positions: pd.DataFrame,
        mpp: float,
        patch_px: int,
        augment: bool = False,
        slide_mpp: Mapping[str, float | None] | None = None,
        seed: int | None = None,
    ) -> None:
        missing_columns = {"slide_id", "x0", "y0", "label"} - set(positions.columns)
        if missing_columns:
            raise BcpathError(f"patch positions lack column(s) {sorted(missing_columns)}; expected slide_id, x0, y0, label")
        unknown = sorted(set(positions["slide_id"]) - set(slide_paths))
        if unknown:
            raise BcpathError(f"patch positions name slide(s) without a path: {', '.join(map(str, unknown))}")
        self.slide_paths = {str(k): str(v) for k, v in slide_paths.items()}
        self.slide_mpp = dict(slide_mpp or {})
        self.slide_ids = positions["slide_id"].astype(str).to_numpy()
        self.x0 = positions["x0"].to_numpy(dtype=np.int64)
        self.y0 = positions["y0"].to_numpy(dtype=np.int64)
        self.labels = positions["label"].to_numpy(dtype=np.int64)
        self.mpp = float(mpp)
        self.patch_px = int(patch_px)
        self.augment = bool(augment)
        self.seed = None if seed is None else int(seed)
        self.epoch = 0
        self._slides: dict[str, Any] = {}

    def __len__(self) -> int:
        return int(len(self.labels))

    def set_epoch(self, epoch: int) -> None:
        """Epoch number mixed into the augmentation seed (only used when ``seed`` is set)."""
        self.epoch = int(epoch)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_slides"] = {}  # reopened lazily in each worker
        return state

    def _slide(self, slide_id: str) -> Any:
        slide = self._slides.get(slide_id)
        if slide is None:
            from bcpath.wsi.reader import open_slide

            slide = open_slide(self.slide_paths[slide_id], slide_id, mpp=self.slide_mpp.get(slide_id))
            self._slides[slide_id] = slide
        return slide

    def read_patch(self, index: int) -> np.ndarray:
        """(P, P, 3) uint8 RGB of patch ``index``, unaugmented."""
        slide = self._slide(str(self.slide_ids[index]))
        return slide.read_region(int(self.x0[index]), int(self.y0[index]), self.patch_px, self.patch_px, self.mpp)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        import torch

        patch = torch.from_numpy(np.ascontiguousarray(self.read_patch(int(index)).transpose(2, 0, 1)))
        if self.augment:
            patch = self._augment(patch, self._generator(int(index)))
        return patch.contiguous(), int(self.labels[index])

    def _generator(self, index: int) -> torch.Generator | None:
        """The augmentation generator of patch ``index`` (None: torch's global one)."""
        import torch

        if self.seed is None:
            return None
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(2, dtype=np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def _augment(self, patch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        import torch

        draws = torch.rand(6, generator=generator)
        if draws[0] < 0.5:
            patch = patch.flip(-1)
        if draws[1] < 0.5:
            patch = patch.flip(-2)
        k = int(torch.randint(0, 4, (1,), generator=generator).item())
        if k:
            patch = torch.rot90(patch, k, dims=(-2, -1))
        factors = 1.0 + JITTER * (2.0 * draws[2:5] - 1.0)  # brightness, contrast, saturation
        hue = HUE_JITTER * (2.0 * float(draws[5]) - 1.0)
        return color_jitter(patch, float(factors[0]), float(factors[1]), float(factors[2]), hue)

    def close(self) -> None:
        """Close the slides this process opened."""
        for slide in self._slides.values():
            slide.close()
        self._slides = {}
