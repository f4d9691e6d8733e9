"""Recsys task end to end on a small written NCF split (fast), plus one real ML-100K run (slow)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.core.runner import run_task

KEYS = {
    "test/target_hr@10",
    "test/target_hr@20",
    "test/target_hr@50",
    "test/target_hits@50",
    "test/target_hr@50_ci_low",
    "test/target_hr@50_ci_high",
    "test/target_ndcg@50",
    "test/prediction_shift",
    "test/rmse",
    "test/mae",
    "test/loo_hr@10",
    "test_best_epoch/target_hr@50",
}
ATTACKS = ["none", "random", "average", "bandwagon", "gradient", "coattack", "gcoattack", "pga"]
DEFENSES = ["none", "apr", "noise", "tcd"]


def write_ncf_split(root: Path, n_users: int, n_items: int, per_user: int, n_negatives: int, seed: int) -> Path:
    """`per_user` - 1 training ratings and one test rating per user, with `n_negatives` sampled negatives (NCF layout)."""
    folder = root / "recsys" / "tcd"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    train, test, neg = [], [], []
    for u in range(n_users):
        items = rng.choice(n_items, per_user, replace=False)
        train += [f"{u}\t{i}\t{rng.integers(1, 6)}\n" for i in items[1:]]
        test.append(f"{u}\t{items[0]}\t{rng.integers(1, 6)}\n")
        pool = np.setdiff1d(np.arange(n_items), items)
        neg.append(f"({u},{items[0]})\t" + "\t".join(map(str, rng.choice(pool, n_negatives))) + "\n")
    (folder / "toy.train.rating").write_text("".join(train))
    (folder / "toy.test.rating").write_text("".join(test))
    (folder / "toy.test.negative").write_text("".join(neg))
    return root


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    """60 users x 80 items, ~20 ratings each, one test rating + 99 negatives per user (NCF layout)."""
    return write_ncf_split(tmp_path_factory.mktemp("data"), 60, 80, 21, 99, seed=0)


def toy_overrides(root: Path, *extra: str) -> list[str]:
    return [
        "task=recsys",
        "debug=fast",
        f"paths.data_dir={root}",
        "dataset.prefix=toy",
        "task.targets=[3,7]",
        "model.network.dim=8",
        "task.batch_size=256",
        f"task.cache_dir={root}/cache",
        *extra,
    ]


def run(make_config, tmp_path, root, *extra) -> tuple[dict, list]:
    out = tmp_path / "run"
    cfg = make_config(*toy_overrides(root, *extra), output_dir=out)
    run_task(cfg, out)
    metrics = json.loads((out / "metrics.json").read_text())
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    return metrics, records


@pytest.mark.parametrize("attack", ATTACKS)
def test_each_attack_runs_with_the_issue_keys(make_config, tmp_path, toy_root, attack) -> None:
    extra = [f"attack={attack}", "defense=none"]
    if attack in ("gradient", "coattack", "gcoattack"):
        extra += ["attack.method.dim=8", "attack.method.batch_size=256"]
    if attack == "pga":
        extra += ["attack.method.dim=4", "attack.method.steps=3"]
    metrics, records = run(make_config, tmp_path, toy_root, *extra)
    assert KEYS <= set(metrics)
    assert records[0]["attack_name"] == attack and records[0]["defense_name"] == "none"
    profiles = (tmp_path / "run" / "artifacts" / "fake_profiles.csv").read_text().splitlines()
    if attack == "none":
        assert profiles == ["user,item,rating"]
    else:  # debug=fast bounds fake users to task.limit = 2; each rates both targets 5
        rows = [line.split(",") for line in profiles[1:]]
        assert {int(u) for u, _, _ in rows} == {60, 61}
        assert sorted((int(u), float(r)) for u, i, r in rows if int(i) in (3, 7)) == [(60, 5.0)] * 2 + [(61, 5.0)] * 2


@pytest.mark.parametrize("defense", DEFENSES)
def test_each_defense_runs(make_config, tmp_path, toy_root, defense) -> None:
    metrics, records = run(
        make_config,
        tmp_path,
        toy_root,
        "attack=average",
        f"defense={defense}",
        "defense.method.warmup=0" if defense in ("apr", "noise") else "attack.size=0.05",
    )
    assert KEYS <= set(metrics) and records[0]["defense_name"] == defense
    assert ("train/pseudo_labels_per_model" in metrics) == (defense == "tcd")
    assert ("train/target_pseudo_label_share" in metrics) == (defense == "tcd")
    if defense == "tcd":
        assert 0 < metrics["train/target_pseudo_label_share"] <= 1
    assert 0 <= metrics["test/target_hr@10"] <= metrics["test/target_hr@20"] <= metrics["test/target_hr@50"] <= 1


def test_tcd_paper_trains_its_own_epochs_and_labels_from_epoch_6(make_config, tmp_path, toy_root) -> None:
    metrics, records = run(make_config, tmp_path, toy_root, "defense=tcd_paper", "attack=average", "task.limit=null")
    assert records[0]["defense_name"] == "tcd_paper" and metrics["test/epoch"] == 25  # not task.epochs (40)
    state = torch.load(tmp_path / "run" / "checkpoints" / "recsys" / "last.ckpt", weights_only=False)
    assert len(state["stats"]["pseudo_per_model"]) == 3 * (25 - 6)  # three models a labelled epoch, epochs 6..24
    assert "exp_avg" not in state["optimizers"][0]["state"][0] and "m" in state["optimizers"][0]["state"][0]


def test_neumf_with_tcd(make_config, tmp_path, toy_root) -> None:
    metrics, _ = run(make_config, tmp_path, toy_root, "model=recsys_neumf", "defense=tcd", "defense.method.start_epoch=0")
    assert metrics["train/pseudo_labels_per_model"] > 0


@pytest.mark.parametrize(
    "override, message",
    [
        ("attack.size=0", "attack.size=0.0: must be a fraction of users in (0, 0.5]"),
        ("attack.size=0.6", "attack.size=0.6"),
        ("task.targets=[3,80]", "task.targets: item ids [80] are not in the catalogue"),
        ("task.targets=cold", "task.targets='cold' is not a target set"),
        ("attack.filler=0", "attack.filler=0"),
    ],
)
def test_bad_input_names_the_key(make_config, tmp_path, toy_root, capsys, override, message) -> None:
    cfg = make_config(*toy_overrides(toy_root, override), output_dir=tmp_path / "run")
    with pytest.raises(SystemExit):
        run_task(cfg, tmp_path / "run")
    assert message in capsys.readouterr().err


def test_rerun_resumes_from_the_saved_loop_state(make_config, tmp_path, toy_root, caplog) -> None:
    """A second run in the same dir picks up checkpoints/recsys/last.ckpt: same fake users, same final model."""
    out = tmp_path / "run"
    first, _ = run(make_config, tmp_path, toy_root, "defense=none")
    profiles = (out / "artifacts" / "fake_profiles.csv").read_text()
    assert (out / "checkpoints" / "recsys" / "last.ckpt").is_file()
    with caplog.at_level("INFO"):
        second, _ = run(make_config, tmp_path, toy_root, "defense=none")
    assert "resuming" in caplog.text
    same = lambda m: {k: v for k, v in m.items() if k.startswith("test")}  # noqa: E731 - no training, no samples/s
    assert same(second) == same(first) and (out / "artifacts" / "fake_profiles.csv").read_text() == profiles


def test_a_resumed_tcd_run_reports_pseudo_labels_of_every_epoch(make_config, tmp_path, toy_root) -> None:
    first, _ = run(make_config, tmp_path, toy_root, "defense=tcd", "attack=average", "attack.size=0.05")
    second, _ = run(make_config, tmp_path, toy_root, "defense=tcd", "attack=average", "attack.size=0.05")  # resumes
    assert second["train/pseudo_labels_per_model"] == first["train/pseudo_labels_per_model"]
    for key in ("train/target_pseudo_label_share", "train/target_pseudo_label_mean", "train/nontarget_pseudo_label_mean"):
        assert second[key] == first[key], key


@pytest.mark.slow
def test_real_ml100k_average_tcd(run_cli) -> None:
    result = run_cli(
        "experiment=recsys_tcd_ml100k", "hydra.mode=RUN", "attack=average", "defense=tcd", "task.epochs=2", "logger=none"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "train/pseudo_labels_per_model" in result.stdout


def write_small_split(root: Path) -> Path:
    return write_ncf_split(root, 40, 60, 16, 20, seed=1)


@pytest.mark.parametrize("attack", ["gradient", "average"])
def test_a_seed_gives_the_same_run_with_a_cold_or_a_warm_profile_cache(make_config, tmp_path, attack) -> None:
    """Profiles draw from their own generator, so reading them from the cache changes nothing that follows."""
    root = write_small_split(tmp_path / "root")  # a data root of its own: this test owns its cache
    extra = [f"attack={attack}", "defense=tcd", "attack.cache=true", "task.loo_k=5"]
    cold, _ = run(make_config, tmp_path / "cold", root, *extra)
    assert len(list((root / "cache").glob(f"profiles_{attack}_*.pt"))) == 1, "the first run wrote the profile cache"
    warm, _ = run(make_config, tmp_path / "warm", root, *extra)
    drop = {"train/samples_per_s"}
    assert {k: v for k, v in cold.items() if k not in drop} == {k: v for k, v in warm.items() if k not in drop}


def test_profiles_cached_by_other_attack_code_are_not_reused(make_config, tmp_path, monkeypatch) -> None:
    from experiments.tasks.recsys import task

    root = write_small_split(tmp_path / "root")
    extra = ["attack=average", "defense=none", "attack.cache=true", "task.loo_k=5"]
    run(make_config, tmp_path / "a", root, *extra)
    monkeypatch.setattr(task, "attack_code_digest", lambda: "edited-attacks")
    run(make_config, tmp_path / "b", root, *extra)
    assert len(list((root / "cache").glob("profiles_average_*.pt"))) == 2
    assert task.attack_seed(0) != task.attack_seed(1) and task.attack_seed(0) != 0  # apart from the training seed
