"""Nuclei dataset readers: synthetic Aperio XML, and the real MoNuSeg / CPM-15 folders."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile

from bcpath.nuclei.datasets import (
    list_cpm15,
    list_monuseg,
    monuseg_polygons,
    rasterise_polygons,
    read_cpm15,
    read_monuseg,
)

XML = """<Annotations MicronsPerPixel="0.252700">
 <Annotation Id="1"><Regions>
  <RegionAttributeHeaders/>
  <Region Id="1"><Vertices>
   <Vertex X="2" Y="2"/><Vertex X="5.4" Y="2"/><Vertex X="5.4" Y="4.6"/><Vertex X="2" Y="4.6"/>
  </Vertices></Region>
  <Region Id="2"><Vertices>
   <Vertex X="5" Y="4"/><Vertex X="8" Y="4"/><Vertex X="8" Y="7"/><Vertex X="5" Y="7"/>
  </Vertices></Region>
 </Regions></Annotation>
</Annotations>
"""


def test_read_monuseg_rasterises_polygons(tmp_path):
    rgb = np.full((10, 12, 3), 200, dtype=np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", rgb)
    (tmp_path / "a.xml").write_text(XML)
    polygons, mpp = monuseg_polygons(tmp_path / "a.xml")
    assert mpp == pytest.approx(0.2527) and len(polygons) == 2
    image, labels = read_monuseg(tmp_path / "a.tif", tmp_path / "a.xml")
    assert image.shape == (10, 12, 3) and labels.dtype == np.int32 and labels.shape == (10, 12)
    expected = np.zeros((10, 12), dtype=np.int32)
    expected[2:6, 2:6] = 1  # vertices rounded: x 2..5, y 2..5, boundary included
    expected[4:8, 5:9] = 2  # later polygon wins where they overlap
    np.testing.assert_array_equal(labels, expected)
    assert rasterise_polygons([], (3, 3)).sum() == 0


def test_read_cpm15_checks_shape(tmp_path):
    rgba = np.zeros((6, 7, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 255
    cv2.imwrite(str(tmp_path / "image01.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    mask = np.zeros((6, 7), dtype=np.uint16)
    mask[1:3, 1:3] = 4
    tifffile.imwrite(tmp_path / "m.tif", mask)
    rgb, labels = read_cpm15(tmp_path / "image01.png", tmp_path / "m.tif")
    assert rgb.shape == (6, 7, 3) and (rgb[..., 0] == 255).all() and (rgb[..., 2] == 0).all()
    assert labels.dtype == np.int32 and labels.max() == 4
    tifffile.imwrite(tmp_path / "bad.tif", np.zeros((5, 7), dtype=np.uint16))
    with pytest.raises(ValueError, match="mask shape"):
        read_cpm15(tmp_path / "image01.png", tmp_path / "bad.tif")


def test_real_monuseg(require_shared):
    samples = list_monuseg(require_shared("nuclei/monuseg_nonbreast"))
    assert len(samples) >= 15
    sample = samples[0]
    assert sample.mpp == pytest.approx(0.2527, abs=0.01)
    rgb, labels = sample.load()
    polygons, _ = monuseg_polygons(sample.annotation)
    assert rgb.shape == (1000, 1000, 3) and rgb.dtype == np.uint8
    ids = np.unique(labels[labels > 0])
    assert len(polygons) - 5 <= ids.size <= len(polygons)
    areas_um2 = np.bincount(labels.ravel())[ids] * sample.mpp**2
    assert 10 < np.median(areas_um2) < 80  # nuclei, not whole glands or specks
    assert 0.05 < (labels > 0).mean() < 0.5


def test_real_cpm15(require_shared):
    samples = list_cpm15(require_shared("nuclei/cpm15"))
    assert len(samples) >= 10
    by_name = {s.name: s for s in samples}
    assert by_name["image01"].mpp == 0.5 and by_name["image10"].mpp == 0.25
    rgb, labels = by_name["image10"].load()  # RGBA PNG on disk
    assert rgb.shape == (808, 1032, 3) and labels.shape == (808, 1032)
    assert labels.dtype == np.int32 and np.unique(labels).size - 1 > 50


def test_cpm15_layout_folder_states_its_mpp(tmp_path):
    from bcpath.errors import BcpathError
    from bcpath.nuclei.datasets import list_nuclei_folder

    (tmp_path / "images").mkdir()
    (tmp_path / "inst_masks").mkdir()
    for name in ("a", "b", "image10"):
        cv2.imwrite(str(tmp_path / "images" / f"{name}.png"), np.zeros((8, 8, 3), np.uint8))
        tifffile.imwrite(tmp_path / "inst_masks" / f"{name}_inst.tif", np.zeros((8, 8), np.uint16))

    def mpps():
        return {s.name: s.mpp for s in list_nuclei_folder(tmp_path)}

    assert mpps() == {"a": 0.5, "b": 0.5, "image10": 0.25}  # CPM-15's own names, else 20x
    (tmp_path / "mpp.json").write_text('{"*": 0.25, "b": 0.3}')
    assert mpps() == {"a": 0.25, "b": 0.3, "image10": 0.25}
    for bad in ('{"*": 0}', '["0.25"]', '{"*": "fast"}', "not json"):
        (tmp_path / "mpp.json").write_text(bad)
        with pytest.raises(BcpathError, match="mpp.json"):
            list_nuclei_folder(tmp_path)
