"""The profile comparison tool on small written files: lengths, rating shares and the HR@50 verdict by hand."""

import json
from pathlib import Path

import numpy as np
import pytest

from experiments.tasks.recsys.compare_profiles import compare, main


def write_run(root: Path, name: str, rows: list[tuple[int, int, float]], hr: float, hits: int) -> Path:
    run = root / name
    (run / "artifacts").mkdir(parents=True)
    lines = ["user,item,rating"] + [f"{u},{i},{r:g}" for u, i, r in rows]
    (run / "artifacts" / "fake_profiles.csv").write_text("\n".join(lines) + "\n")
    (run / "metrics.json").write_text(json.dumps({"test/target_hr@50": hr, "test/target_hits@50": hits}))
    return run


def test_summaries_and_verdict(tmp_path) -> None:
    reference = tmp_path / "PGA_poisoning_3_2_0.400000.npy"
    np.save(reference, np.array([[0.2, 0.0, 1.0, 0.6], [0.0, 0.4, 1.0, 0.0]]))  # ratings 1 . 5 3 / . 2 5 .
    refs = [write_run(tmp_path, f"r{s}", [(9, 2, 5.0)], hr, h) for s, (hr, h) in enumerate([(0.10, 10), (0.14, 14)])]
    runs = [
        write_run(tmp_path, "g0", [(9, 0, 4.0), (9, 2, 5.0), (10, 2, 5.0), (10, 3, 4.0), (10, 1, 2.0)], 0.12, 12),
        write_run(tmp_path, "g1", [(9, 2, 5.0), (9, 1, 1.0)], 0.20, 20),
    ]
    out = compare(reference, 5.0, refs, runs)
    assert out["authors"] == dict(
        profiles=2, length_mean=2.5, length_min=2, length_max=3, rating_mean=3.2,
        rating_shares={"1": 0.2, "2": 0.2, "3": 0.2, "5": 0.4},
    )  # fmt: skip
    gen = out["generated"]  # 3 profiles of 2, 3 and 2 ratings: 4 5 / 5 4 2 / 5 1
    assert (gen["profiles"], gen["length_min"], gen["length_max"], gen["length_mean"]) == (3, 2, 3, 2.33)
    assert gen["rating_shares"] == {"1": 0.1429, "2": 0.1429, "4": 0.2857, "5": 0.4286}
    hr = out["undefended_target_hr50"]
    assert hr["generated_median"] == pytest.approx(0.16) and hr["authors_range"] == [0.10, 0.14]
    assert hr["within_seed_spread"] is False and hr["generated_hits"] == [12, 20]


def test_a_run_without_profiles_is_one_error_line(tmp_path, capsys) -> None:
    reference = tmp_path / "ref.npy"
    np.save(reference, np.ones((1, 3)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as stop:
        main(["--reference", str(reference), "--max-rating", "5", "--reference-runs", str(tmp_path / "empty"),
              "--runs", str(tmp_path / "empty"), "--out", str(tmp_path / "out.json")])  # fmt: skip
    assert stop.value.code == 2 and "no artifacts/fake_profiles.csv" in capsys.readouterr().err
