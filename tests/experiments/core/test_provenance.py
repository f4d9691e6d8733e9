"""provenance.json names what a sweep's job mixes: modules imported at the sweep's start, files read now."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.core import provenance


@pytest.fixture
def conf(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setattr(provenance, "_launch", None)
    (tmp_path / "attack").mkdir()
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "attack" / "gcoattack.yaml").write_text("name: gcoattack\n")
    (tmp_path / "attack" / "random.yaml").write_text("name: random\n")
    return tmp_path


def test_a_job_lists_the_config_files_edited_added_or_removed_since_launch(conf: Path) -> None:
    assert provenance.drift_since_launch() == {}, "no launch recorded: nothing claimed"
    provenance.remember_launch(conf)
    assert provenance.drift_since_launch()["conf_changed_since_launch"] == []
    (conf / "attack" / "gcoattack.yaml").write_text("name: gcoattack\nhinge: reference\n")
    (conf / "attack" / "random.yaml").unlink()
    (conf / "attack" / "new.yaml").write_text("name: new\n")
    drift = provenance.drift_since_launch()
    assert drift["conf_changed_since_launch"] == ["attack/gcoattack.yaml", "attack/new.yaml", "attack/random.yaml"]
    assert drift["launch_git_commit"] == provenance.collect()["git_commit"]
    (warning,) = provenance.drift_warnings(drift)
    assert "attack/gcoattack.yaml" in warning and "re-launch" in warning


def test_a_commit_made_during_a_sweep_is_named_with_both_ids() -> None:
    record = {"launch_git_commit": "a" * 40, "git_commit": "b" * 40, "conf_changed_since_launch": []}
    (warning,) = provenance.drift_warnings(record)
    assert "aaaaaaaaaaaa -> bbbbbbbbbbbb" in warning
    assert provenance.drift_warnings({**record, "git_commit": "a" * 40}) == []
