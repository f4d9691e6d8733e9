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


def test_a_replay_names_its_rows_by_the_files_attack_and_its_size_where_one_attack_has_two(tmp_path: Path) -> None:
    summary = tmp_path / "summary.csv"
    header = "defense,attack.path,attack_name,n_fake,condition,metric,n,runs,median,q25,q75,mean\n"
    rows = [
        ("none", "p/TNA_poisoning_1018_18.npy", "tna", 18, 0.2),
        ("tcd", "p/TNA_poisoning_1018_18.npy", "tna", 18, 0.02),
        ("none", "p/PGA_poisoning_1018_28.npy", "pga", 28, 0.4),
        ("none", "p/PGA_poisoning_1018_9.npy", "pga", 9, 0.1),
        ("none", "p/aush_poisoning_1018_18.npy", "aush", 18, 0.3),
    ]
    summary.write_text(header + "".join(f"{d},{p},{a},{n},all,target_hr@50,3,3,{m},{m},{m},{m}\n" for d, p, a, n, m in rows))
    text = tables(summary, ["target_hr@50"])
    assert text.count("**target_hr@50**") == 1  # the file and the fake-user count are row labels, not settings
    body = [line for line in text.splitlines() if line.startswith("| ") and "attack" not in line]
    assert body == ["| aush | 0.3 |  |", "| pga (9 fake) | 0.1 |  |", "| pga (28 fake) | 0.4 |  |", "| tna | 0.2 | 0.02 |"]
