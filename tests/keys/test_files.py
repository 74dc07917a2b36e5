from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from keys.files import ensure_private_dir, exclusive_lock, remove_file, write_private_file


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_private_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_private_file(tmp_path / "f", b"one")
    finally:
        os.umask(old)
    assert (tmp_path / "f").read_bytes() == b"one"
    assert mode(tmp_path / "f") == 0o600


def test_write_private_file_replaces_and_tightens(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    target.chmod(0o644)
    write_private_file(target, b"new")
    assert target.read_bytes() == b"new"
    assert mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_failed_write_keeps_the_old_bytes_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f"
    write_private_file(target, b"old")

    def crash(src: object, dst: object) -> None:
        raise OSError(5, "simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        write_private_file(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_ensure_private_dir_creates_0700(tmp_path: Path) -> None:
    ensure_private_dir(tmp_path / "a" / "b")
    assert mode(tmp_path / "a" / "b") == 0o700
    ensure_private_dir(tmp_path / "a" / "b")  # exists: no error


def test_remove_file_is_quiet_when_missing(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    remove_file(tmp_path / "f")
    remove_file(tmp_path / "f")
    assert not (tmp_path / "f").exists()


def test_exclusive_lock_creates_a_0600_lock(tmp_path: Path) -> None:
    with exclusive_lock(tmp_path / "lock"):
        assert mode(tmp_path / "lock") == 0o600
