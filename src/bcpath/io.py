"""Atomic output writing: every output goes to a temporary name and is moved into place.

A killed job therefore never leaves a half-written file under its final name.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read by setting it, then restore at once
    os.umask(mask)
    return mask


def _give_normal_mode(path: Path, directory: bool = False) -> None:
    # mkstemp/mkdtemp create 0600/0700; a finished output gets the mode the umask gives a
    # normally created file (0644/0755 under umask 022), so colleagues can read results.
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; rename it onto ``path`` on success.

    The temporary name keeps ``path``'s suffix last so writers that pick a format from the
    suffix (PIL, pandas) still work. On an exception the temporary file is removed.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".tmp{final.suffix}", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.exists():
            _give_normal_mode(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; move it onto ``path`` on success.

    Used for directory outputs such as Zarr stores. An existing ``path`` is replaced.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    # Leftovers of a killed earlier attempt at this output (one job owns an output at a time).
    for stale in final.parent.glob(f".{final.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        _give_normal_mode(tmp, directory=True)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_fingerprint(path: str | os.PathLike[str], block: int = 1 << 20) -> str:
    """``size:sha256`` of a file's first and last ``block`` bytes: cheap on multi-GB slides, and
    different after a re-export or a copy that did not finish, but not after a mere touch or a
    copy that lost the modification times. Empty when the file does not exist (yet)."""
    import hashlib

    try:
        size = os.path.getsize(path)
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            digest.update(handle.read(block))
            if size > block:
                handle.seek(max(block, size - block))
                digest.update(handle.read(block))
    except OSError:
        return ""
    return f"{size}:{digest.hexdigest()}"


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def json_ready(value: Any) -> Any:
    """A copy of ``value`` that strict JSON accepts: NaN/inf → None, numpy scalars and arrays →
    Python numbers and lists, paths → strings; dicts, lists and tuples recursively."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return json_ready(value.tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(value: Any) -> Any:
    # numpy scalars and paths show up in metadata dicts; make them plain JSON.
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@functools.cache
def _libc_malloc_trim() -> Any:
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return None


def release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Tile loops allocate and free many arrays of a few MB (a tile, its float maps). glibc
    raises its mmap threshold to the largest such array freed, so later ones come from the
    heap, whose freed holes stay resident: the process's RSS then creeps with the number of
    tiles (2 MB per tile in detect_mitoses). Calling this once per tile keeps RSS at what is
    live.
    """
    trim = _libc_malloc_trim()
    if trim is not None:
        trim(0)
