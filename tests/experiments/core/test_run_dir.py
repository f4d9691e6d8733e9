"""`ckpt_path` is parsed in one place; the resume check and every fit read the same answer."""

from pathlib import Path

import pytest

from experiments.core.run_dir import ResumeFrom


def test_the_named_choices(tmp_path):
    assert ResumeFrom.parse(None) == ResumeFrom("auto")
    assert ResumeFrom.parse("last") == ResumeFrom("last")
    assert ResumeFrom.parse("none") == ResumeFrom("never")


def test_a_folder_is_a_run_dir_and_anything_else_a_checkpoint_file(tmp_path):
    assert ResumeFrom.parse(str(tmp_path)) == ResumeFrom("run_dir", tmp_path)
    assert ResumeFrom.parse(str(tmp_path / "x.ckpt")) == ResumeFrom("file", tmp_path / "x.ckpt")


@pytest.mark.parametrize(
    ("ckpt_path", "root"),
    [
        (None, "run/checkpoints"),
        ("last", "run/checkpoints"),
        ("none", None),
        ("other", "other/checkpoints"),
        ("other/checkpoints/fit/last.ckpt", "other/checkpoints"),
        ("loose.ckpt", None),
    ],
)
def test_the_checkpoints_folder_a_resume_reads(tmp_path, monkeypatch, ckpt_path, root):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "other" / "checkpoints" / "fit").mkdir(parents=True)
    got = ResumeFrom.parse(ckpt_path).checkpoint_root(Path("run"))
    assert got == (None if root is None else Path(root))
