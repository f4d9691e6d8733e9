"""Specification of experiments.analysis.aggregate and experiments.analysis.stats on tiny fake Hydra multiruns."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from common.errors import UserError
from experiments.analysis.aggregate import collect_records, compare, main, summarize
from experiments.analysis.stats import holm, mann_whitney, median_iqr, wilcoxon_paired


def make_job(
    sweep: Path, name: str, overrides: list[str], metrics: dict[str, Any] | None, records: list[dict[str, Any]] | None = None
) -> Path:
    """Write one job dir as the runner would; ``metrics=None`` leaves it incomplete."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if records is not None:
        (job / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return job


def rows_for(rows: list[dict[str, Any]], **where: Any) -> list[dict[str, Any]]:
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


@pytest.fixture
def lr_sweep(tmp_path: Path) -> Path:
    """2 learning rates x 3 seeds, plus one incomplete job."""
    sweep = tmp_path / "multirun"
    i = 0
    for lr, f1s in [(0.01, [0.5, 0.7, 0.6]), (0.1, [0.9, 0.8, 0.85])]:
        for seed, f1 in enumerate(f1s):
            make_job(
                sweep,
                str(i),
                [f"model.lr={lr}", f"seed={seed}", "hydra.job.chdir=true"],
                {"test/weighted_f1": f1, "test/loss": 1 - f1},
            )
            i += 1
    make_job(sweep, str(i), ["model.lr=0.5", "seed=0"], None)
    return sweep


@pytest.fixture
def condition_sweep(tmp_path: Path) -> Path:
    """Jobs over dataset.n_train with records.jsonl holding two clearly separated conditions."""
    sweep = tmp_path / "multirun"
    for i, n_train in enumerate([10, 60, 500]):
        records = []
        for seed in range(6):
            records.append(
                {
                    "condition": "freeze_informed",
                    "seed": seed,
                    "val_error": 0.1 + 0.01 * seed,
                    "epochs_to_cutoff": None if seed == 0 else 10.0 + seed,
                    "reached_cutoff": 1.0,
                }
            )
            records.append(
                {
                    "condition": "baseline",
                    "seed": seed,
                    "val_error": 0.5 + 0.01 * seed,
                    "epochs_to_cutoff": 30.0 + seed,
                    "reached_cutoff": 1.0,
                }
            )
        make_job(sweep, f"nested/{i}", [f"dataset.n_train={n_train}"], {"mean/val_error": 0.3}, records)
    return sweep


# ---------------------------------------------------------------- stats


def test_median_iqr_matches_numpy_and_ignores_nan() -> None:
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    expected = (np.median(values), np.percentile(values, 25), np.percentile(values, 75))
    assert median_iqr(values) == pytest.approx(expected)
    assert median_iqr(values + [math.nan, None]) == pytest.approx(expected)
    assert all(math.isnan(v) for v in median_iqr([math.nan, None]))


def test_mann_whitney_small_for_separated_samples_nan_when_meaningless() -> None:
    assert mann_whitney([1, 2, 3, 4, 5, 6], [11, 12, 13, 14, 15, 16]) < 0.01
    assert mann_whitney([1, 2, 3], [1.5, 2.5, 3.5]) > 0.3
    assert math.isnan(mann_whitney([1.0], [2.0, 3.0]))
    assert math.isnan(mann_whitney([1.0, math.nan], [2.0, 3.0]))
    assert math.isnan(mann_whitney([2.0, 2.0], [2.0, 2.0, 2.0]))


def test_holm_hand_computed() -> None:
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.01, math.nan, 0.04])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([]) == []


# ---------------------------------------------------------------- collecting and summarising


def test_collect_skips_and_counts_incomplete_jobs(lr_sweep: Path) -> None:
    records, incomplete = collect_records(lr_sweep)
    assert incomplete == 1
    assert len(records) == 6
    assert {r["seed"] for r in records} == {0, 1, 2}
    assert all(r["condition"] == "all" and "hydra.job.chdir" not in r for r in records)


def test_a_folder_of_links_to_jobs_reads_like_the_sweep_each_job_once(lr_sweep: Path, tmp_path: Path) -> None:
    """Jobs of several sweeps are combined by linking them into one folder; a second link to a job and a link
    loop must neither double a job nor hang."""
    combined = tmp_path / "combined"
    combined.mkdir()
    jobs = sorted(p for p in lr_sweep.iterdir() if (p / "metrics.json").is_file())
    for i, job in enumerate(jobs):
        (combined / f"job{i}").symlink_to(job, target_is_directory=True)
    (combined / "again").symlink_to(jobs[0], target_is_directory=True)
    (combined / "loop").symlink_to(combined, target_is_directory=True)
    records, _ = collect_records(combined)
    assert sorted(r["seed"] for r in records) == sorted(r["seed"] for r in collect_records(lr_sweep)[0])


def test_grouping_pools_seeds_but_separates_other_overrides(lr_sweep: Path) -> None:
    rows = summarize(collect_records(lr_sweep)[0], ["test/weighted_f1"])
    assert [(r["model.lr"], r["condition"]) for r in rows] == [(0.01, "all"), (0.1, "all")]
    assert all("seed" not in r for r in rows)
    low = rows[0]
    assert (low["n"], low["runs"]) == (3, 3)
    assert (low["median"], low["q25"], low["q75"]) == pytest.approx(
        (np.median([0.5, 0.7, 0.6]), np.percentile([0.5, 0.7, 0.6], 25), np.percentile([0.5, 0.7, 0.6], 75))
    )


def test_jobs_differing_only_in_how_they_report_pool_together(tmp_path: Path) -> None:
    # seeds run on different days, once with the default logger and once with logger=none and no progress bar
    make_job(tmp_path, "0", ["model.lr=0.1", "seed=0"], {"test/weighted_f1": 0.5})
    make_job(
        tmp_path, "1", ["model.lr=0.1", "seed=1", "logger=none", "trainer.enable_progress_bar=false"], {"test/weighted_f1": 0.7}
    )
    make_job(tmp_path, "2", ["model.lr=0.1", "seed=2", "trainer.max_epochs=3"], {"test/weighted_f1": 0.9})
    rows = summarize(collect_records(tmp_path)[0], ["test/weighted_f1"])
    # max_epochs changes the numbers: its own group; logger and progress bar do not
    assert {r["trainer.max_epochs"]: (r["n"], r["median"]) for r in rows} == {None: (2, pytest.approx(0.6)), 3: (1, 0.9)}
    assert all("logger" not in r and "trainer.enable_progress_bar" not in r for r in rows)


def test_records_jsonl_gives_one_row_per_condition_and_ignores_null(condition_sweep: Path) -> None:
    records, incomplete = collect_records(condition_sweep)
    assert incomplete == 0 and len(records) == 36
    rows = summarize(records, ["epochs_to_cutoff"])
    assert len(rows) == 6
    row = rows_for(rows, condition="freeze_informed", **{"dataset.n_train": 60})[0]
    assert (row["n"], row["runs"]) == (5, 6)
    assert row["median"] == pytest.approx(np.median([11, 12, 13, 14, 15]))
    assert {r["metric"] for r in summarize(records)} == {"val_error", "epochs_to_cutoff", "reached_cutoff"}


def test_record_seed_wins_over_override(tmp_path: Path) -> None:
    make_job(tmp_path, "0", ["seed=7"], {"acc": 1.0}, [{"condition": "a", "seed": 3, "acc": 1.0}, {"acc": 0.5}])
    records, _ = collect_records(tmp_path)
    assert [(r["condition"], r["seed"]) for r in records] == [("a", 3), ("all", 7)]


def test_compare_separated_conditions_holm_adjusted_within_each_group(condition_sweep: Path) -> None:
    records = collect_records(condition_sweep)[0]
    rows = compare(records, [("condition", "freeze_informed", "baseline")], ["val_error"])
    assert len(rows) == 3  # one per group of the sweep
    for row in rows:
        assert row["p"] < 0.01
        assert row["p_holm"] == pytest.approx(row["p"])  # a family of one test per group
        assert row["diff_median"] == pytest.approx(-0.4)
    two_metrics = compare(records, [("condition", "freeze_informed", "baseline")], ["val_error", "epochs_to_cutoff"])
    first_group = [r for r in two_metrics if r["dataset.n_train"] == 10]
    assert len(first_group) == 2  # Holm over this group's two tests, not the table's six
    smaller, larger = sorted(first_group, key=lambda r: r["p"])
    assert smaller["p_holm"] == pytest.approx(min(1.0, 2 * smaller["p"]))
    assert larger["p_holm"] == pytest.approx(max(smaller["p_holm"], larger["p"]))


# ---------------------------------------------------------------- CLI


def test_cli_writes_markdown_csv_and_line_plot(condition_sweep: Path, capsys: pytest.CaptureFixture) -> None:
    out = condition_sweep / "out"
    code = main(
        [
            str(condition_sweep),
            "--x",
            "dataset.n_train",
            "--compare",
            "freeze_informed:baseline",
            "--metric",
            "val_error",
            "--metric",
            "epochs_to_cutoff",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    markdown = (out / "summary.md").read_text()
    assert "freeze_informed" in markdown and "baseline" in markdown
    assert "## val_error" in markdown and "## Comparisons" in markdown
    assert "| dataset.n_train | freeze_informed | baseline |" in markdown  # conditions as columns
    assert markdown in capsys.readouterr().out
    assert (out / "plot_val_error.png").stat().st_size > 0
    assert (out / "plot_epochs_to_cutoff.png").exists()
    with (out / "summary.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 12
    assert (out / "comparisons.csv").exists()


def test_cli_bar_plot_default_out_and_incomplete_note(lr_sweep: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(lr_sweep)]) == 0
    out = lr_sweep / "aggregate"
    assert (out / "plot_test_weighted_f1.png").exists() and (out / "plot_test_loss.png").exists()
    assert not (out / "comparisons.csv").exists()
    stdout = capsys.readouterr().out
    assert "1 incomplete jobs skipped" in stdout
    assert "| 0.01 | 0.6 [0.55, 0.65] |" in stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}"], "does not exist"),
        (["{empty}"], "no completed jobs"),
        (["{sweep}", "--metric", "nope"], "known metrics: test/weighted_f1, test/loss"),
        (["{sweep}", "--x", "dataset.n_train"], "known keys: model.lr"),
        (["{sweep}", "--compare", "a:b"], "no condition 'a'"),
        (["{sweep}", "--compare", "ab"], "is not A:B"),
    ],
)
def test_cli_errors_return_2_with_message(
    lr_sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "sweep": lr_sweep}
    assert main([a.format(**paths) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_api_raises_user_error_for_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="multirun dir .* does not exist"):
        collect_records(tmp_path / "nowhere")


def test_where_keeps_only_matching_jobs_and_rejects_unknown_keys(condition_sweep: Path, capsys) -> None:
    assert main([str(condition_sweep), "--where", "dataset.n_train=60", "--metric", "val_error"]) == 0
    stdout = capsys.readouterr().out
    assert "every job ran with dataset.n_train=60" in stdout
    assert main([str(condition_sweep), "--where", "model.lr=1"]) == 2
    assert "not an override of this sweep" in capsys.readouterr().err


def test_wandb_flag_logs_the_aggregate_as_an_offline_run(condition_sweep: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert main([str(condition_sweep), "--x", "dataset.n_train", "--metric", "val_error", "--wandb"]) == 0
    runs = list((condition_sweep / "aggregate" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    assert list(runs[0].parent.glob("files/media/images/aggregate/*.png"))  # the plot went in as an image


# ---------------------------------------------------------------- factors and the paired test


@pytest.fixture
def attack_sweep(tmp_path: Path) -> Path:
    """Jobs over attack (an override) whose records carry two factors, `defense` and `attack_size` (an int),
    5 seeds each; TCD lowers the hit ratio by ~0.1 with a seed-specific offset shared by both arms."""
    sweep = tmp_path / "multirun"
    for i, attack in enumerate(["random", "average"]):
        records = []
        for size in (1, 3):
            for seed in range(5):
                base = 0.1 * size + 0.05 * seed  # the seed moves both arms alike: pairing removes it
                records.append({"defense": "none", "attack_size": size, "seed": seed, "hr": base + 0.1, "rmse": 1.0})
                records.append({"defense": "tcd", "attack_size": size, "seed": seed, "hr": base + 0.01 * seed, "rmse": 1.2})
        make_job(sweep, str(i), [f"attack={attack}", "experiment=tcd"], {"hr": 0.0}, records)
    return sweep


def test_str_and_int_record_fields_are_factors_floats_are_metrics(attack_sweep: Path) -> None:
    records, _ = collect_records(attack_sweep)
    rows = summarize(records, ["hr"])
    combos = {(r["attack"], r["defense"], r["attack_size"]) for r in rows}
    assert len(rows) == len(combos) == 2 * 2 * 2  # one row per factor combination
    assert {r["metric"] for r in summarize(records)} == {"hr", "rmse"}  # attack_size (int) is not a metric
    row = rows_for(rows, attack="average", defense="tcd", attack_size=3)[0]
    assert row["runs"] == 5 and row["median"] == pytest.approx(0.3 + 0.1 + 0.01 * 2)


def test_compare_on_a_factor_pairs_within_each_other_cell(attack_sweep: Path) -> None:
    records, _ = collect_records(attack_sweep)
    unpaired = compare(records, [("defense", "tcd", "none")], ["hr"])
    paired = compare(records, [("defense", "tcd", "none")], ["hr"], paired=True)
    assert len(unpaired) == len(paired) == 4  # attack x attack_size cells
    for u, p in zip(unpaired, paired):
        assert (u["attack"], u["attack_size"]) == (p["attack"], p["attack_size"])
        assert u["test"] == "Mann-Whitney U" and p["test"].startswith("Wilcoxon")
        assert u["diff_median"] == pytest.approx(-0.1 + 0.02, abs=1e-9)
        assert p["n_a"] == p["n_b"] == 5
        assert p["p"] == pytest.approx(0.0625)  # 5 pairs, all differences negative: 2 / 2**5
        assert u["p"] > 0.05  # the seed spread hides the effect from the unpaired test


def test_wilcoxon_pairs_by_seed_and_ignores_unmatched() -> None:
    p, n = wilcoxon_paired({0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0, 4: 5.0, 9: 0.0}, {0: 2.0, 1: 3.1, 2: 4.2, 3: 5.3, 4: 6.4})
    assert n == 5 and p == pytest.approx(0.0625)
    assert math.isnan(wilcoxon_paired({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})[0])  # no differences at all


def test_cli_compare_factor_paired_names_the_test(attack_sweep: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(attack_sweep), "--metric", "hr", "--compare", "defense=tcd:none", "--paired"]) == 0
    out = capsys.readouterr().out
    assert "Wilcoxon signed-rank (paired by seed)" in out
    assert "| attack | attack_size | condition | metric | factor | A | B |" in out
    assert main([str(attack_sweep), "--compare", "defense=apr:none"]) == 2
    assert "no defense value 'apr'" in capsys.readouterr().err


def test_jobs_are_grouped_and_filtered_by_the_commit_that_produced_them(lr_sweep: Path, capsys) -> None:
    for i, job in enumerate(sorted(p for p in lr_sweep.iterdir() if (p / "metrics.json").exists())):
        commit = "a" * 40 if i < 3 else "b" * 40
        (job / "provenance.json").write_text(json.dumps({"git_commit": commit, "git_dirty": i == 5}))
    records, _ = collect_records(lr_sweep)
    assert {r["git_commit"] for r in records} == {"a" * 12, "b" * 12, "b" * 12 + "+dirty"}
    assert main([str(lr_sweep), "--where", f"git_commit={'a' * 12}", "--metric", "test/weighted_f1"]) == 0
    out = capsys.readouterr().out
    assert "every job ran with model.lr=0.01; code commit aaaaaaaaaaaa (3 records)" in out
    assert main([str(lr_sweep), "--metric", "test/weighted_f1"]) == 0  # one experiment, whatever commit each job ran
    out = capsys.readouterr().out
    assert "| git_commit |" not in out and "jobs ran code commits aaaaaaaaaaaa (3 records), bbbbbbbbbbbb (2 records)" in out
    assert main([str(lr_sweep), "--metric", "test/weighted_f1", "--by-commit"]) == 0
    assert "| git_commit |" in capsys.readouterr().out
