"""Atomic file writes: a reader finds the old file or the whole new one, never a part."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Runs ``write(tmp)`` on a hidden file beside ``path``, then renames it to ``path``.

    The temporary name keeps ``path``'s suffix, for writers that pick a format by
    it (matplotlib). It is removed when ``write`` fails.
    """
    path = Path(path)
    tmp = path.with_name(f".tmp.{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))
