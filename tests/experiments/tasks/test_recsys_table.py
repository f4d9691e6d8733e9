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


def test_a_sweep_over_attack_sizes_gets_one_table_per_size(tmp_path: Path) -> None:
    summary = tmp_path / "summary.csv"
    header = "defense,attack,attack.size,condition,metric,n,runs,median,q25,q75,mean\n"
    summary.write_text(
        header
        + "tcd,average,0.01,all,target_hr@50,1,1,0.11,0.11,0.11,0.11\n"
        + "tcd,average,0.05,all,target_hr@50,1,1,0.55,0.55,0.55,0.55\n"
    )
    text = tables(summary, ["target_hr@50"])
    small, large = text.split("**target_hr@50**")[1:]
    assert "attack.size=0.01" in small and "| average | 0.11 |" in small and "0.55" not in small
    assert "attack.size=0.05" in large and "| average | 0.55 |" in large


def test_rows_the_table_cannot_tell_apart_are_refused(tmp_path: Path) -> None:
    summary = tmp_path / "summary.csv"
    summary.write_text(HEADER.replace("defense,", "defense,attack,") + "tcd,average,all,target_hr@50,1,1,0.1,0.1,0.1,0.1\n" * 2)
    with pytest.raises(UserError, match="two rows for attack=average defense=tcd"):
        tables(summary, ["target_hr@50"])
