"""medhash_sdk.atomic: whole files or none, permissions without touching the process umask."""
from __future__ import annotations

import os
import stat

import pytest

from medhash_sdk.atomic import atomic_open, atomic_write


def test_new_file_mode_without_changing_the_umask(tmp_path, monkeypatch):
    old = os.umask(0o027)
    try:
        def forbidden(*_):
            raise AssertionError("os.umask is process-wide: atomic writes must not call it")
        monkeypatch.setattr(os, "umask", forbidden)
        atomic_write(tmp_path / "new.bin", b"abc")
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new.bin").st_mode) == 0o640     # 0644 minus umask 027
    assert (tmp_path / "new.bin").read_bytes() == b"abc"


def test_replacement_keeps_mode_and_failure_keeps_old_file(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    os.chmod(target, 0o600)
    atomic_write(target, b"new")
    assert target.read_text() == "new" and stat.S_IMODE(os.stat(target).st_mode) == 0o600
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as f:
            f.write("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]       # no temporary left behind


def test_a_folder_as_target_is_refused_before_writing(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError, match="name a file inside it"):
        with atomic_open(tmp_path / "d") as f:
            raise AssertionError(f"opened {f.name}")
    assert [p.name for p in tmp_path.iterdir()] == ["d"] and not any((tmp_path / "d").iterdir())
