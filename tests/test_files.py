"""Files every layer writes: a folder appears whole or not at all, and a cache filled by several
processes at once keeps the first complete copy."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from common.files import atomic_write_dir


def test_a_folder_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    def fail(tmp: Path) -> None:
        (tmp / "half").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write_dir(tmp_path / "out", fail)
    assert list(tmp_path.iterdir()) == []  # no folder, no temporary left behind
    atomic_write_dir(tmp_path / "out", lambda tmp: (tmp / "old").write_text("1"))
    atomic_write_dir(tmp_path / "out", lambda tmp: (tmp / "new").write_text("2"))
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["new"]  # an older folder is replaced whole


def test_a_cache_folder_keeps_the_first_complete_copy(tmp_path: Path) -> None:
    atomic_write_dir(tmp_path / "cache", lambda tmp: (tmp / "first").write_text("1"), keep_existing=True)
    atomic_write_dir(tmp_path / "cache", lambda tmp: (tmp / "second").write_text("2"), keep_existing=True)
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]  # the loser's temporary folder is gone too
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["first"]


def _fill(path: str, name: str) -> None:
    def write(tmp: Path) -> None:
        for i in range(50):
            (tmp / f"{name}_{i}").write_text(name)

    atomic_write_dir(path, write, keep_existing=True)


def test_writers_racing_for_one_cache_folder_leave_one_whole_copy(tmp_path: Path) -> None:
    target = str(tmp_path / "cache")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.starmap(_fill, [(target, f"w{k}") for k in range(8)])
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(names) == 50 and len({n.split("_")[0] for n in names}) == 1  # one writer's folder, whole
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]
