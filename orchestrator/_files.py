"""Files of a sweep: atomic writes (what the sweep writes is either the old file or the new one,
never half, after a killed driver or a full disk), storage locations that are folders or URIs
(`s3://...`), opened the way Ray Tune opens them, and whether the process that left a file
behind is still alive."""

from __future__ import annotations

import os
from typing import Any

import pyarrow.fs as pafs

from trainers._atomic import atomic_write

__all__ = ["atomic_write_bytes", "filesystem", "is_uri", "process_alive"]


def is_uri(location: str) -> bool:
    """Whether a storage location is a URI (`s3://bucket/path`), not a local folder."""
    return "://" in location


def filesystem(location: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path in it) for a folder or a URI, the way Ray Tune opens it."""
    if is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), location


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the new one, never half."""
    atomic_write(path, lambda f: f.write(data))


def process_alive(pid: int) -> bool:
    """Whether a process of this machine with that id exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
