"""Atomic file writes: every result, state and checkpoint file goes through here.

A file is written next to its destination under a name unique to this process, then renamed
over it (``os.replace`` is atomic on one filesystem), so a run killed mid-write leaves the old
file or the new one, never half of one, and processes sharing a folder never clobber each
other's temporaries.
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path to write; on success it replaces ``path`` (its folder is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def digest(*items: str | Path) -> str:
    """A short content hash of files (``Path``: their bytes) and texts (``str``), to tell whether cached work is stale."""
    h = hashlib.sha256()
    for item in items:
        h.update(item.read_bytes() if isinstance(item, Path) else item.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]
