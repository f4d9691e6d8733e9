"""The attack x defence tables read any recsys summary.csv, including sweeps that kept a factor fixed."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import UserError
from experiments.tasks.recsys.table import tables

HEADER = "defense,condition,metric,n,runs,median,q25,q75,mean\n"


def test_a_sweep_over_defences_only_names_its_fixed_attack(tmp_path: Path) -> None:
    summary = tmp_path / "summary.csv"
    summary.write_text(HEADER + "none,all,target_hr@50,3,3,0.86,0.8,0.9,0.85\ntcd,all,target_hr@50,3,3,0.04,0.03,0.05,0.04\n")
    text = tables(summary, ["target_hr@50"], attack="gcoattack")
    assert "| attack | none | tcd |" in text and "| gcoattack | 0.86 | 0.04 |" in text
    with pytest.raises(UserError, match="no 'attack' column .* --attack"):
        tables(summary, ["target_hr@50"])


def test_a_missing_summary_or_metric_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a file: run `python -m experiments.analysis.aggregate"):
        tables(tmp_path / "summary.csv", ["target_hr@50"], attack="gcoattack")
    summary = tmp_path / "summary.csv"
    summary.write_text(HEADER + "none,all,target_hr@50,3,3,0.86,0.8,0.9,0.85\n")
    with pytest.raises(UserError, match=r"has no metric rmse \(it has target_hr@50\)"):
        tables(summary, ["target_hr@50", "rmse"], attack="gcoattack")
