"""Modality-quality analysis: per-seed losses and their paired tests, against scipy on hand-made sweeps."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import wilcoxon

from experiments.tasks.erc.quality import main

SEEDS = range(6)
CLEAN = {"cmath": [0.80, 0.78, 0.79, 0.81, 0.77, 0.80], "symmetric": [0.82, 0.80, 0.81, 0.80, 0.79, 0.83]}
NOISY = {  # (modality, noise) -> condition -> per-seed accuracy
    ("audio", 2.0): {"cmath": [0.79, 0.78, 0.78, 0.80, 0.77, 0.79], "symmetric": [0.75, 0.74, 0.78, 0.71, 0.72, 0.70]},
    ("text", 2.0): {"cmath": [0.60, 0.55, 0.62, 0.58, 0.50, 0.61], "symmetric": [0.70, 0.69, 0.71, 0.64, 0.66, 0.72]},
}


def write_job(path: Path, modality: str, noise: float, accuracies: dict[str, list[float]]) -> None:
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(
        f"- dataset.degrade.modality={modality}\n- dataset.degrade.noise_std={noise}\n"
    )
    (path / "metrics.json").write_text("{}")
    rows = [{"condition": c, "seed": s, "test_accuracy": accuracies[c][s]} for c in accuracies for s in SEEDS]
    (path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    write_job(tmp_path / "sweep" / "0", "audio", 0.0, CLEAN)
    for i, ((modality, noise), accuracies) in enumerate(NOISY.items(), start=1):
        write_job(tmp_path / "sweep" / str(i), modality, noise, accuracies)
    return tmp_path / "sweep"


def test_losses_are_paired_by_seed_and_tested_against_scipy(sweep: Path):
    assert main([str(sweep), "--reference", "cmath"]) == 0
    with open(sweep / "quality" / "losses.csv") as handle:
        rows = {r["modality"]: r for r in csv.DictReader(handle)}
    expected_p = {}
    for (modality, _), noisy in NOISY.items():
        ours = np.subtract(CLEAN["cmath"], noisy["cmath"])
        theirs = np.subtract(CLEAN["symmetric"], noisy["symmetric"])
        expected_p[modality] = wilcoxon(ours - theirs).pvalue
        row = rows[modality]
        assert row["other"] == "symmetric" and int(row["pairs"]) == 6
        assert float(row["reference_loss_median"]) == pytest.approx(np.median(ours))
        assert float(row["other_loss_median"]) == pytest.approx(np.median(theirs))
        assert int(row["reference_loses_less"]) == int((ours < theirs).sum())
        assert float(row["p"]) == pytest.approx(expected_p[modality])
    low, high = sorted(expected_p.values())
    holm = {m: (2 * low if p == low else max(2 * low, high)) for m, p in expected_p.items()}
    assert {m: float(r["p_holm"]) for m, r in rows.items()} == pytest.approx(holm)
    assert int(rows["audio"]["reference_loses_less"]) == 6 and int(rows["text"]["reference_loses_less"]) == 0
    per_seed = (sweep / "quality" / "losses_per_seed.csv").read_text().splitlines()
    assert len(per_seed) == 1 + 2 * 2 * 6 and "cmath,audio,2.0,0,0.01" in per_seed


def test_a_sweep_without_a_clean_job_is_refused_in_one_line(sweep: Path, capsys):
    shutil.rmtree(sweep / "0")
    assert main([str(sweep), "--reference", "cmath"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: no clean job (dataset.degrade.noise_std=0.0) for condition 'cmath': run level 0 as well"]


def test_an_unknown_reference_is_refused(sweep: Path, capsys):
    assert main([str(sweep), "--reference", "cmth"]) == 2
    assert "--reference cmth: no such condition" in capsys.readouterr().err
