"""Atomic outputs: a failed or killed writer never leaves a file under its final name."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from bcpath.io import atomic_dir, atomic_path, release_free_memory, write_json


def test_atomic_path_removes_partial_file_on_error(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("{half")
        raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "tiles.zarr"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "b").write_text("2")
        raise RuntimeError("killed")
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["tiles.zarr"]


def test_write_json_handles_numpy_scalars(tmp_path):
    import numpy as np

    write_json(tmp_path / "x.json", {"a": np.float32(1.5), "b": np.int64(2)})
    assert (tmp_path / "x.json").read_text().split() == ["{", '"a":', "1.5,", '"b":', "2", "}"]


def test_killed_tiling_leaves_no_final_output(require_shared, tmp_path):
    slide = require_shared("wsi/tcga-cr-7395-01a-01-ts1.svs")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "bcpath.cli", "tile", str(slide), "--out", str(out), "--mpp", "0.25", "--tile-mpp", "0.5", "--tile-px", "256", "--threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not any(out.glob(".tiles.zarr.*.tmp/0/*/*")):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert any(out.glob(".tiles.zarr.*.tmp")), "tiling finished before it could be killed"
    assert not (out / "tiles.zarr").exists()
    assert not (out / "grid.parquet").exists()


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750), (0o077, 0o600, 0o700)])
def test_atomic_outputs_get_the_mode_the_umask_gives(tmp_path, umask, file_mode, dir_mode):
    import os
    import stat

    old = os.umask(umask)
    try:
        write_json(tmp_path / "x.json", {"a": 1})
        with atomic_dir(tmp_path / "tiles.zarr") as tmp:
            (tmp / "chunk").write_text("1")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "tiles.zarr").stat().st_mode) == dir_mode


def test_release_free_memory_returns_freed_heap_pages():
    import numpy as np

    def rss_kb() -> int:
        status = open("/proc/self/status").read() if sys.platform.startswith("linux") else ""
        return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)

    # Arrays below the mmap threshold come from the heap; keep every 8th so freed holes stay.
    blocks = [np.ones(64 * 1024, np.uint8) for _ in range(2000)]
    kept = blocks[::8]
    del blocks
    before = rss_kb()
    release_free_memory()
    assert rss_kb() <= before and len(kept) == 250
