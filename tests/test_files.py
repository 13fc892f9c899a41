"""Atomic writes keep the old file whole when the writer fails."""

from __future__ import annotations

import pytest

from prosg_jax.files import atomic_write, write_text


def test_write_text_replaces_the_file(tmp_path):
    path = tmp_path / "a.md"
    write_text(path, "old")
    assert write_text(path, "new") == path
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.md"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    write_text(path, "old")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_the_temporary_keeps_the_suffix(tmp_path):
    seen = []
    atomic_write(tmp_path / "plot.png", lambda tmp: (seen.append(tmp.suffix), tmp.write_bytes(b"")))
    assert seen == [".png"]
