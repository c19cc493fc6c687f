"""Training crops of the mitosis classifier from real data (../shared/data, see its README).

- Mitotic figures: AMi-Br (Bertram et al. 2025) patches, 128×128 RGB at about 0.25 µm/px,
  centred on the figure, in ``patches/normal`` and ``patches/atypical``; ``AMI-BR.csv`` gives
  each patch's slide (file name ``{dataset}_{uid}.png``). Label 1, atypical from the folder,
  group ``{dataset}:{slide}`` (whole slides are held out for validation).
- Other nuclei (label 0): crops centred on the annotated nuclei of the nuclei sets
  (MoNuSeg Aperio-XML layout or CPM-15 layout, read with :mod:`bcpath.nuclei`), plus random
  hematoxylin-peak candidates of the same images (:func:`find_candidates`), so that negatives
  look like what the detector sees. Group = source image (a CoNSeP tile's group is the image it
  was cut from). Caveat: a few annotated nuclei may be mitoses, and the two sources differ in
  origin (breast slides from two challenges vs other organs), which stain and scale
  augmentation is there to blur.

Everything is resampled to the model's µm/px; crops are ``crop_px`` square (larger than the
model's ``patch_px``: the margin serves scale and shift augmentation). A crop file that cannot
be read is skipped with a warning naming it, and counted.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from bcpath.errors import BcpathError
from bcpath.nuclei.datasets import NucleiSample
from bcpath.proliferation.candidates import CandidateParams, find_candidates
from bcpath.proliferation.mitosis import CropSet, centre_crop, extract_crops

logger = logging.getLogger(__name__)

AMIBR_MPP = 0.25
"""µm/px of the AMi-Br patches (MIDOG21 and TUPAC16 scanners: 0.23-0.25 µm/px)."""
AMIBR_CLASSES = {"normal": 0, "atypical": 1}
"""AMi-Br patch folder → atypical label."""
_TILE_SUFFIX = re.compile(r"^((?:train|test)_\d+)_\d+$")  # CoNSeP tiles: train_<image>_<tile>


@dataclass
class AmibrCrops:
    """AMi-Br mitotic figures as crops plus what each came from.

    Attributes:
        crops: :class:`CropSet` (labels all 1, atypical 0/1, groups ``dataset:slide``).
        files: (N,) the patch files, same order.
        skipped: files that could not be read (each logged).
    """

    crops: CropSet
    files: list[Path]
    skipped: list[Path] = field(default_factory=list)


@dataclass
class NucleiImage:
    """One annotated nuclei image at the model's µm/px.

    Attributes:
        name: ``folder:stem``; group: ``folder:source image``.
        rgb: (H, W, 3) uint8 at the model's µm/px; centroids: (n, 2) x, y px of the annotated
            nuclei there.
    """

    name: str
    group: str
    rgb: NDArray[np.uint8]
    centroids: NDArray[np.float64]


def image_area_mm2(image: NucleiImage, mpp: float) -> float:
    """Area of an image at ``mpp`` µm/px in mm²."""
    return float(image.rgb.shape[0] * image.rgb.shape[1]) * (mpp / 1000.0) ** 2


def resample_to(rgb: NDArray[np.uint8], mpp: float, model_mpp: float) -> NDArray[np.uint8]:
    """``rgb`` at ``mpp`` → the model's µm/px (area down, linear up; see nuclei.predict)."""
    from bcpath.nuclei.predict import resample_rgb

    return resample_rgb(rgb, mpp, model_mpp)


def fit_crop(rgb: NDArray[np.uint8], size: int) -> NDArray[np.uint8]:
    """The central (size, size, 3) of an image, reflect-padded when it is smaller."""
    h, w = rgb.shape[:2]
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        rgb = np.pad(rgb, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="reflect")
    return np.ascontiguousarray(centre_crop(rgb, size))


def _amibr_slides(root: Path) -> dict[str, str]:
    """Patch file name → ``dataset:slide`` from AMI-BR.csv ({} without the file)."""
    table_path = root / "AMI-BR.csv"
    if not table_path.is_file():
        return {}
    try:
        table = pd.read_csv(table_path)
        names = table["dataset"].astype(str) + "_" + table["uid"].astype(str) + ".png"
        return dict(zip(names, table["dataset"].astype(str) + ":" + table["slide"].astype(str), strict=True))
    except (KeyError, ValueError, pd.errors.ParserError) as exc:
        raise BcpathError(f"{table_path}: expected columns dataset, uid, slide ({exc}); restore the AMi-Br table") from exc


def read_amibr(root: str | Path, model_mpp: float, crop_px: int, source_mpp: float = AMIBR_MPP) -> AmibrCrops:
    """AMi-Br patches as (N, crop_px, crop_px, 3) crops at ``model_mpp``.

    Args:
        root: the AMi-Br folder (``patches/{normal,atypical}/*.png``, ``AMI-BR.csv``).
        model_mpp: the model's µm/px; crop_px: crop side at it.
        source_mpp: µm/px of the patches.

    Raises:
        BcpathError: no patch folder, or no readable patch.
    """
    from bcpath.images import read_uint8_image

    root = Path(root)
    folders = {name: root / "patches" / name for name in AMIBR_CLASSES}
    if not any(f.is_dir() for f in folders.values()):
        raise BcpathError(f"AMi-Br folder {root}: no patches/normal or patches/atypical; give the folder holding patches/ and AMI-BR.csv")
    slides = _amibr_slides(root)
    if not slides:
        logger.warning("AMi-Br folder %s: no AMI-BR.csv; each patch is its own group (no slide-wise split possible)", root)
    images: list[NDArray[np.uint8]] = []
    atypical: list[int] = []
    groups: list[str] = []
    files: list[Path] = []
    skipped: list[Path] = []
    for name, label in AMIBR_CLASSES.items():
        if not folders[name].is_dir():
            continue
        for path in sorted(folders[name].glob("*.png")):
            try:
                rgb = read_uint8_image(path)
                if rgb.ndim != 3:
                    raise BcpathError(f"image {path}: grayscale; expected an RGB patch")
            except BcpathError as exc:
                logger.warning("skipped corrupt crop %s: %s", path, exc)
                skipped.append(path)
                continue
            images.append(fit_crop(resample_to(rgb, source_mpp, model_mpp), crop_px))
            atypical.append(label)
            groups.append(slides.get(path.name, f"unlisted:{path.stem}"))
            files.append(path)
    if skipped:
        logger.warning("AMi-Br folder %s: %d unreadable crop file(s) skipped (first: %s)", root, len(skipped), skipped[0])
    if not images:
        raise BcpathError(f"AMi-Br folder {root}: no readable patch in patches/normal or patches/atypical")
    crops = CropSet(
        np.stack(images), np.ones(len(images), np.int64), np.asarray(atypical, np.int64), np.asarray(groups, dtype=np.str_)
    )
    return AmibrCrops(crops, files, skipped)


def nuclei_group(sample: NucleiSample) -> str:
    """``folder:source image`` of a nuclei sample (CoNSeP tiles grouped by their image)."""
    match = _TILE_SUFFIX.match(sample.name)
    return f"{sample.image.parent.parent.name}:{match.group(1) if match else sample.name}"


def list_nuclei_samples(folders: Sequence[str | Path], model_mpp: float) -> list[NucleiSample]:
    """Annotated images of the nuclei folders that are at least as fine as ``model_mpp``.

    Images coarser than the model's µm/px (CPM-15's 20× images for a 0.25 µm/px model) are
    left out, as detection refuses them too (logged).
    """
    from bcpath.nuclei.datasets import list_nuclei_folder

    samples: list[NucleiSample] = []
    for folder in folders:
        listed = list_nuclei_folder(folder)
        fine = [s for s in listed if s.mpp <= model_mpp * 1.1]
        if len(fine) < len(listed):
            logger.info("%s: %d image(s) coarser than %.3f µm/px left out", folder, len(listed) - len(fine), model_mpp)
        samples += fine
    if not samples:
        raise BcpathError(f"nuclei folders {list(map(str, folders))}: no image at {model_mpp} µm/px or finer")
    return samples


def load_nuclei_images(samples: Iterable[NucleiSample], model_mpp: float) -> list[NucleiImage]:
    """Each sample resampled to ``model_mpp`` with its nuclei centroids (x, y px there)."""
    from scipy import ndimage

    from bcpath.nuclei.training import prepare_samples

    out = []
    for sample in samples:
        prepared = prepare_samples([sample], model_mpp)[0]
        labels = prepared.labels
        ids = np.unique(labels)
        ids = ids[ids > 0]
        centres = np.asarray(ndimage.center_of_mass(np.ones_like(labels), labels, ids), np.float64).reshape(-1, 2)
        out.append(NucleiImage(f"{sample.image.parent.parent.name}:{sample.name}", nuclei_group(sample), prepared.rgb, centres[:, ::-1]))
    return out


def _inside(xy: NDArray[np.float64], shape: tuple[int, ...], margin: float) -> NDArray[np.bool_]:
    """Points at least ``margin`` px from every border of an image of ``shape``."""
    h, w = shape[:2]
    return (xy[:, 0] >= margin) & (xy[:, 1] >= margin) & (xy[:, 0] < w - margin) & (xy[:, 1] < h - margin)


def nuclei_negative_crops(
    images: Sequence[NucleiImage],
    model_mpp: float,
    crop_px: int,
    nuclei_per_mm2: float,
    candidates_per_mm2: float,
    seed: int = 0,
    candidate_params: CandidateParams | None = None,
) -> CropSet:
    """Non-mitotic crops (label 0): annotated nuclei and random hematoxylin-peak candidates.

    Per image at most ``nuclei_per_mm2`` × its area annotated nuclei and ``candidates_per_mm2``
    × area candidates are drawn at random (seeded), whose crop lies wholly inside the image
    (no reflected borders that only negatives would have). Returns crops (N, crop_px, crop_px, 3).
    """
    candidate_params = candidate_params or CandidateParams()
    rng = np.random.default_rng(seed)
    parts: list[NDArray[np.uint8]] = []
    groups: list[str] = []
    margin = crop_px / 2.0
    for image in images:
        area = image_area_mm2(image, model_mpp)
        nuclei = image.centroids[_inside(image.centroids, image.rgb.shape, margin)]
        peaks = find_candidates(image.rgb, model_mpp, candidate_params)
        peak_xy = peaks[["x", "y"]].to_numpy(np.float64)
        peak_xy = peak_xy[_inside(peak_xy, image.rgb.shape, margin)]
        chosen = []
        for points, density in ((nuclei, nuclei_per_mm2), (peak_xy, candidates_per_mm2)):
            n = min(len(points), int(np.ceil(density * area)))
            if n:
                chosen.append(points[rng.choice(len(points), n, replace=False)])
        if not chosen:
            continue
        xy = np.concatenate(chosen)
        parts.append(extract_crops(image.rgb, xy[:, 0], xy[:, 1], crop_px))
        groups += [image.group] * len(xy)
    if not parts:
        return CropSet(np.zeros((0, crop_px, crop_px, 3), np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.str_))
    n = len(groups)
    return CropSet(np.concatenate(parts), np.zeros(n, np.int64), np.full(n, -1, np.int64), np.asarray(groups, dtype=np.str_))


def split_groups(groups: Sequence[str] | NDArray[np.str_], val_fraction: float, seed: int = 0) -> set[str]:
    """Validation groups: whole groups drawn at random (seeded) until they hold ≥ ``val_fraction``
    of the items, separately within each prefix before ``:`` (dataset), so every dataset is
    represented on both sides."""
    values = pd.Series(np.asarray(groups, dtype=str))
    counts = values.value_counts().sort_index()
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    prefixes = counts.index.str.split(":").str[0]
    for prefix in sorted(set(prefixes)):
        own = counts[prefixes == prefix]
        target = val_fraction * own.sum()
        taken = 0
        for group in rng.permutation(own.index.to_numpy()):
            if taken >= target or len(chosen & set(own.index)) >= len(own) - 1:
                break
            chosen.add(str(group))
            taken += int(own[group])
    return chosen
