"""Readers for the annotated nuclei sets in ``../shared/data/nuclei`` (see its README).

- MoNuSeg 2018 (Kumar et al. 2017/2020): ``images/*.tif`` (1000×1000 H&E, 40×) and
  ``annotations/*.xml`` (Aperio XML, one polygon per nucleus:
  ``Annotations/Annotation/Regions/Region/Vertices/Vertex X Y``; ``MicronsPerPixel`` on the root).
- CPM-15 (Vu et al. 2019): ``images/imageXX.png`` and ``inst_masks/imageXX_inst.tif`` (uint16
  instance labels, 0 = background). Magnification per image from the challenge README:
  image01-07 at 20× (0.5 µm/px), image08-15 at 40× (0.25 µm/px). Other folders in this
  layout (your own annotations) are read at 0.5 µm/px unless an ``mpp.json`` beside
  ``images/`` says otherwise: ``{"*": 0.25}`` for all images, or ``{"<stem>": 0.25, ...}``.

Every reader returns ``(rgb uint8 (H, W, 3), instances int32 (H, W))``.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import tifffile
from numpy.typing import NDArray

from bcpath.errors import BcpathError
from bcpath.images import IMAGE_SUFFIXES

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "TCGA_TSS_ORGAN",
    "NucleiSample",
    "evaluate_dataset",
    "list_cpm15",
    "list_monuseg",
    "list_nuclei_folder",
    "load_sample",
    "monuseg_polygons",
    "rasterise_polygons",
    "read_cpm15",
    "read_monuseg",
    "sample_organ",
    "source_image",
]

MONUSEG_DEFAULT_MPP = 0.25
# CPM-15 README_training.txt: image01-07 at 20x, image08-15 at 40x.
CPM15_40X = frozenset(f"image{i:02d}" for i in range(8, 16))
# Image files of a CPM-15-layout folder: any of IMAGE_SUFFIXES (CoNSeP's tiles are JPEG as distributed).


@dataclass(frozen=True)
class NucleiSample:
    """One annotated image: where its pixels and its labels are, and its µm/px."""

    dataset: str  # "monuseg" or "cpm15"
    name: str
    image: Path
    annotation: Path
    mpp: float

    def load(self) -> tuple[NDArray[np.uint8], NDArray[np.int32]]:
        return load_sample(self)


def _to_rgb(image: NDArray[np.generic], path: Path) -> NDArray[np.uint8]:
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"{path}: expected an RGB(A) image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"{path}: expected 8-bit pixels, got {image.dtype}")
    return np.ascontiguousarray(image[..., :3])


def read_rgb(path: str | Path) -> NDArray[np.uint8]:
    """Read an 8-bit RGB image (TIFF via tifffile, anything else via OpenCV); alpha dropped."""
    path = Path(path)
    if path.suffix.lower() in {".tif", ".tiff"}:
        return _to_rgb(tifffile.imread(path), path)
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"cannot read image {path}")
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def monuseg_polygons(xml: str | Path) -> tuple[list[NDArray[np.float64]], float | None]:
    """Polygons (each (n, 2) x, y in pixels) and ``MicronsPerPixel`` (None if absent)."""
    root = ET.parse(xml).getroot()
    polygons: list[NDArray[np.float64]] = []
    for region in root.iter("Region"):
        vertices = region.findall("./Vertices/Vertex")
        if not vertices:
            continue
        pts = np.array([[float(v.get("X", "nan")), float(v.get("Y", "nan"))] for v in vertices])
        if np.isfinite(pts).all():
            polygons.append(pts)
    mpp_text = root.get("MicronsPerPixel")
    mpp = float(mpp_text) if mpp_text else None
    return polygons, (mpp if mpp and mpp > 0 else None)


def _monuseg_mpp(xml: Path) -> float | None:
    """``MicronsPerPixel`` of the root element, read without parsing the whole file."""
    for _, element in ET.iterparse(xml, events=("start",)):
        text = element.get("MicronsPerPixel")
        value = float(text) if text else 0.0
        return value if value > 0 else None
    return None


def rasterise_polygons(
    polygons: list[NDArray[np.float64]], shape: tuple[int, int]
) -> NDArray[np.int32]:
    """Instance labels 1..n in polygon order (cv2.fillPoly, vertices rounded to pixel centres).

    Where polygons overlap, the later polygon wins. Polygons that end up with no pixel (fully
    outside the image or covered by later ones) leave a gap in the label sequence.
    """
    labels = np.zeros(shape, dtype=np.int32)
    for index, pts in enumerate(polygons, start=1):
        contour = np.round(pts).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(labels, [contour], color=(index,))
    return labels


def read_monuseg(image: str | Path, xml: str | Path) -> tuple[NDArray[np.uint8], NDArray[np.int32]]:
    """MoNuSeg image and its nuclei rasterised from the Aperio XML polygons."""
    rgb = read_rgb(image)
    polygons, _ = monuseg_polygons(xml)
    return rgb, rasterise_polygons(polygons, (rgb.shape[0], rgb.shape[1]))


def read_cpm15(image: str | Path, mask: str | Path) -> tuple[NDArray[np.uint8], NDArray[np.int32]]:
    """CPM-15 image and its instance mask."""
    rgb = read_rgb(image)
    labels = np.asarray(tifffile.imread(mask))
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"{mask}: mask shape {labels.shape} != image shape {rgb.shape[:2]}")
    return rgb, labels.astype(np.int32)


def list_monuseg(root: str | Path) -> list[NucleiSample]:
    """Samples under a MoNuSeg folder (``images/*.tif`` + ``annotations/*.xml``), by name."""
    root = Path(root)
    samples = []
    for image in sorted((root / "images").glob("*.tif")):
        xml = root / "annotations" / f"{image.stem}.xml"
        if not xml.exists():
            raise FileNotFoundError(f"{image}: no annotation {xml}")
        mpp = _monuseg_mpp(xml) or MONUSEG_DEFAULT_MPP
        samples.append(NucleiSample("monuseg", image.stem, image, xml, mpp))
    if not samples:
        raise FileNotFoundError(f"no MoNuSeg images under {root / 'images'}")
    return samples


def _stated_mpp(path: Path) -> dict[str, float]:
    """``mpp.json`` as {stem or "*": µm/px}; {} without the file; ValueError naming it if bad."""
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
        stated = {str(k): float(v) for k, v in raw.items()}
    except (ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: expected a JSON object of image stem (or \"*\") to µm/px, e.g. {{\"*\": 0.25}} ({error})") from error
    bad = [k for k, v in stated.items() if not (math.isfinite(v) and 0.05 <= v <= 20)]
    if bad:
        raise ValueError(f"{path}: µm/px out of range 0.05-20 for {bad}")
    return stated


def list_cpm15(root: str | Path) -> list[NucleiSample]:
    """Samples under a CPM-15 folder (``images/*.png|jpg`` + ``inst_masks/*_inst.tif``), by name;
    µm/px from ``mpp.json`` when the folder has one (see the module docstring)."""
    root = Path(root)
    stated = _stated_mpp(root / "mpp.json")
    samples = []
    images = sorted(p for p in (root / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if (root / "images").is_dir() else []
    for image in images:
        mask = root / "inst_masks" / f"{image.stem}_inst.tif"
        if not mask.exists():
            raise FileNotFoundError(f"{image}: no instance mask {mask}")
        mpp = stated.get(image.stem, stated.get("*", 0.25 if image.stem in CPM15_40X else 0.5))
        samples.append(NucleiSample("cpm15", image.stem, image, mask, mpp))
    if not samples:
        raise FileNotFoundError(f"no CPM-15 images under {root / 'images'}")
    return samples


def source_image(name: str) -> str:
    """The source image a sample was cut from, for splits that keep an image's tiles together:
    ``train_<image>_<tile>`` (CoNSeP's tiles) → ``train_<image>``; any other name is its own."""
    parts = name.rsplit("_", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return f"{parts[0]}_{parts[1]}"
    return name


def load_sample(sample: NucleiSample) -> tuple[NDArray[np.uint8], NDArray[np.int32]]:
    """Read a listed sample with the reader of its dataset."""
    if sample.dataset == "monuseg":
        return read_monuseg(sample.image, sample.annotation)
    if sample.dataset == "cpm15":
        return read_cpm15(sample.image, sample.annotation)
    raise ValueError(f"unknown nuclei dataset {sample.dataset!r}")


# TCGA tissue source site (barcode field 2) → organ, for the MoNuSeg images in shared/data.
# From the TCGA code tables (project of each site): LUSC/LUAD, KIRC/KIRP, COAD, PRAD, BLCA, LGG.
# (Kumar et al. 2017 list the 21-/50- lung images as "liver"; the TCGA project is used here.)
TCGA_TSS_ORGAN: dict[str, str] = {
    "21": "lung", "44": "lung", "50": "lung", "69": "lung",
    "2Z": "kidney", "B0": "kidney", "GL": "kidney", "IZ": "kidney",
    "A6": "colon", "NH": "colon",
    "CH": "prostate", "EJ": "prostate", "G9": "prostate", "HC": "prostate",
    "CU": "bladder", "ZF": "bladder",
    "FG": "brain", "HT": "brain",
    "18": "lung", "38": "lung", "49": "lung",  # other MoNuSeg lung sites
    "A7": "breast", "AR": "breast", "E2": "breast", "AO": "breast",
    "KB": "stomach", "RD": "stomach",
}  # fmt: skip


def list_nuclei_folder(folder: str | Path) -> list[NucleiSample]:
    """Samples of one dataset folder: MoNuSeg layout (``images/*.tif`` + ``annotations/*.xml``)
    or CPM-15 layout (``images/*.png`` + ``inst_masks/*_inst.tif``); BcpathError otherwise."""
    folder = Path(folder)
    images = folder / "images"
    try:
        if (folder / "annotations").is_dir() and any(images.glob("*.tif")):
            return list_monuseg(folder)
        if (folder / "inst_masks").is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in images.glob("*")):
            return list_cpm15(folder)
    except FileNotFoundError as exc:
        raise BcpathError(
            f"nuclei data folder {folder}: {exc}; every image needs its annotation"
        ) from exc
    except ValueError as exc:
        raise BcpathError(f"nuclei data folder {folder}: {exc}") from exc
    raise BcpathError(
        f"nuclei data folder {folder}: neither MoNuSeg layout (images/*.tif + annotations/*.xml) "
        "nor CPM-15 layout (images/*.png + inst_masks/<stem>_inst.tif); arrange it as one of them"
    )


def sample_organ(sample: NucleiSample) -> str:
    """Organ of a sample: MoNuSeg from the TCGA site code, CPM-15 ``"brain_or_head_neck"``."""
    if sample.dataset == "monuseg" or sample.name.startswith("TCGA-"):
        parts = sample.name.split("-")
        if len(parts) > 1 and parts[1] in TCGA_TSS_ORGAN:
            return TCGA_TSS_ORGAN[parts[1]]
        return "unknown"
    if sample.dataset == "cpm15":
        return "brain_or_head_neck"
    return "unknown"


def evaluate_dataset(folders: Sequence[str | Path], segmenter: Any) -> pd.DataFrame:
    """Seed 2's Table 2 for annotated dataset folders: one row per image, then the mean.

    Args:
        folders: MoNuSeg- or CPM-15-layout folders (:func:`list_nuclei_folder`).
        segmenter: ``(rgb, mpp) -> labels`` (:func:`bcpath.nuclei.slide.get_segmenter`).

    Returns:
        DataFrame dataset, image, organ, mpp, aji, map, f1/precision/recall at 0.5 and 0.7, pq,
        dice; the last row has image "mean".
    """
    import pandas as pd

    from bcpath.nuclei.metrics import evaluate

    rows: list[dict[str, Any]] = []
    for folder in folders:
        for sample in list_nuclei_folder(folder):
            rgb, truth = sample.load()
            scores = evaluate(truth, np.asarray(segmenter(rgb, sample.mpp)))
            rows.append({"dataset": sample.dataset, "image": sample.name, "organ": sample_organ(sample), "mpp": sample.mpp, **scores})
    table = pd.DataFrame(rows)
    if len(table):
        mean = table.drop(columns=["dataset", "image", "organ"]).mean(numeric_only=True).to_dict()
        table = pd.concat([table, pd.DataFrame([{"dataset": "", "image": "mean", "organ": "", **mean}])], ignore_index=True)
    return table
