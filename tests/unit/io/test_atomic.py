"""io/atomic.py: a file or folder appears whole or not at all."""

from __future__ import annotations

import pytest

from slimforge.io.atomic import atomic_dir, atomic_write_text


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def _interrupted_build(target, exc: BaseException, name: str = "half.bin") -> None:
    with atomic_dir(target) as tmp:
        (tmp / name).write_text("2")
        raise exc


def test_atomic_dir_appears_only_when_complete(tmp_path):
    target = tmp_path / "run"
    with pytest.raises(RuntimeError):
        _interrupted_build(target, RuntimeError("interrupted"))
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_keeps_the_old_folder_when_the_new_one_fails(tmp_path):
    target = tmp_path / "run"
    with atomic_dir(target) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(KeyboardInterrupt):
        _interrupted_build(target, KeyboardInterrupt(), name="v")
    assert (target / "v").read_text() == "1"
    with atomic_dir(target) as tmp:
        (tmp / "v").write_text("3")
    assert (target / "v").read_text() == "3"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert target.stat().st_mode & 0o055  # group/others can read: not mkdtemp's 0700
