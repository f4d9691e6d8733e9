"""attack=file end to end: the saved profiles are what the models train on, the records name the condition by
the file's attack, bad files stop the run in one line (exit 2), and a real file of the TCD authors is read
through the data-root setting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate

from common.errors import UserError
from experiments.core.runner import run_task
from experiments.tasks.recsys.task import attack_shape, read_targets
from tests.experiments.tasks.test_recsys import run, toy_overrides, write_ncf_split

N_USERS, N_ITEMS, TARGETS = 60, 80, [3, 7]  # the toy split of test_recsys (targets [3, 7])


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    return write_ncf_split(tmp_path_factory.mktemp("data"), N_USERS, N_ITEMS, 21, 99, seed=0)


def poison_file(root: Path, name: str, n_fake: int = 3, n_items: int = N_ITEMS, targets: list[int] = TARGETS) -> Path:
    """Profiles in the reference's layout under <root>/poison: float64 [n_fake, n_items] of ratings / 5, each
    fake user rating 10 fillers (0.2..1.0) and every target 1.0."""
    rng = np.random.default_rng(len(name))
    values = np.zeros((n_fake, n_items))
    for row in values:
        fillers = rng.choice(np.setdiff1d(np.arange(n_items), targets), 10, replace=False)
        row[fillers] = rng.integers(1, 6, 10) / 5
        row[targets] = 1.0
    (root / "poison").mkdir(exist_ok=True)
    np.save(root / "poison" / name, values)
    return root / "poison" / name


def test_a_replay_trains_on_the_files_profiles_and_records_its_attack(make_config, tmp_path, toy_root) -> None:
    path = poison_file(toy_root, "TNA_poisoning_3_3_0.400000.npy")
    metrics, records = run(
        make_config,
        tmp_path,
        toy_root,
        "attack=file",
        f"attack.path={path.relative_to(toy_root)}",
        "defense=none",
        "task.limit=3",
    )
    rows = [line.split(",") for line in (tmp_path / "run" / "artifacts" / "fake_profiles.csv").read_text().splitlines()[1:]]
    injected = np.zeros((3, N_ITEMS))
    for user, item, rating in rows:
        injected[int(user) - N_USERS, int(item)] = float(rating)
    assert np.array_equal(injected, np.load(path) * 5)  # the file's values x R, every profile, nothing else
    record = records[0]
    assert record["attack_name"] == "tna" and record["n_fake"] == 3
    assert record["attack_size"] == pytest.approx(3 / N_USERS)
    assert metrics["test/target_hits@50"] / (N_USERS * len(TARGETS)) == pytest.approx(metrics["test/target_hr@50"])
    assert metrics["test/target_hr@50_ci_low"] <= metrics["test/target_hr@50"] <= metrics["test/target_hr@50_ci_high"]
    assert "attack=file (tna)" in (tmp_path / "run" / "results.md").read_text()


def test_a_label_names_the_condition_of_a_file_named_otherwise(make_config, tmp_path, toy_root) -> None:
    path = poison_file(toy_root, "profiles.npy", n_fake=2)
    _, records = run(make_config, tmp_path, toy_root, "attack=file", f"attack.path={path}", "attack.label=mine", "defense=none")
    assert records[0]["attack_name"] == "mine" and records[0]["n_fake"] == 2


@pytest.mark.parametrize(
    "n_items, targets, extra, message",
    [
        (N_ITEMS + 1, TARGETS, [], f"81 item columns, the data set has {N_ITEMS} items"),
        (N_ITEMS, [5, 9], [], "of task.targets [3, 7] are not rated by every profile"),
        (N_ITEMS, TARGETS, ["attack.size=0.03"], "attack=file: the file fixes the fake users and their fillers"),
    ],
)
def test_a_file_of_another_data_set_or_target_set_exits_2_naming_it(
    make_config, tmp_path, toy_root, capsys, n_items, targets, extra, message
) -> None:
    path = poison_file(toy_root, f"average_poisoning_{targets[0]}_3_{n_items}.npy", n_items=n_items, targets=targets)
    cfg = make_config(*toy_overrides(toy_root, "attack=file", f"attack.path={path}", *extra), output_dir=tmp_path / "run")
    with pytest.raises(SystemExit) as exit_:
        run_task(cfg, tmp_path / "run")
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "metrics.json").exists()
    if not extra:
        assert str(path) in err


def test_run_py_exits_2_on_values_outside_zero_one(run_cli, tmp_path, toy_root) -> None:
    path = poison_file(toy_root, "aush_poisoning_3_3_0.400000.npy")
    values = np.load(path)
    values[0, values[0] == 1.0] = 5.0  # ratings, not ratings / R
    np.save(path, values)
    result = run_cli(*toy_overrides(toy_root, "attack=file", f"attack.path={path}"))
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines()[-1]
        == f"error: {path}: value 5 at (profile 0, item 3) is outside [0, 1]; the file must hold ratings divided by the rating maximum R (0 = unrated)"
    )


class Limitless:
    """The run context's only use here: no debug bound on the fake-user count."""

    def limit(self, count: int) -> int:
        return count


def test_a_real_file_of_the_tcd_authors_is_read_through_the_data_root(make_config, data_dir) -> None:
    name = "recsys/tcd_poison/ml-100k/aush_poisoning_1485_28_0.400000.npy"
    if not (data_dir / name).is_file():
        pytest.skip(f"{data_dir / name} is absent: the TCD authors' poison files are not under this data root")
    cfg = make_config("task=recsys", "dataset=ml100k_tcd", "attack=file", f"attack.path={name}", "task.targets=unpopular")
    data, attack = instantiate(cfg.dataset), instantiate(cfg.attack.method)
    targets = read_targets(cfg, data)
    assert attack.file == data_dir / name and attack.attack_name == "aush"
    assert attack_shape(cfg, Limitless(), data, targets, attack) == (28, 96)  # 101 ratings a profile, 5 of them targets
    fake = attack.profiles(data.n_items, targets, data.max_rating)
    assert (fake[:, targets] == 5).all() and set(fake.unique().tolist()) == {0, 1, 2, 3, 4, 5}
    other = make_config("task=recsys", "dataset=ml100k_tcd", "attack=file", f"attack.path={name}", "task.targets=random")
    with pytest.raises(
        UserError,
        match=r"target item\(s\) \[1018, 946, 597, 575, 516\] of task.targets .* not rated by every profile \(unrated in 27, 28, 25, 27, 26 of 28\)",
    ):
        attack_shape(other, Limitless(), data, read_targets(other, data), instantiate(other.attack.method))


def test_the_replay_experiment_sweeps_every_saved_file_of_its_target_set(make_config, data_dir) -> None:
    """Each file the experiment sweeps is a valid replay of ML-100K's random target set, and no saved file of
    that set (first target 1018) is left out."""
    cfg = make_config("experiment=recsys_tcd_ml100k_replay")
    swept = [p.strip() for p in cfg.hydra.sweeper.params["attack.path"].split(",")]
    folder = data_dir / "recsys" / "tcd_poison" / "ml-100k"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: the TCD authors' poison files are not under this data root")
    assert sorted(Path(p).name for p in swept) == sorted(p.name for p in folder.glob("*_poisoning_1018_*.npy"))
    data = instantiate(cfg.dataset)
    targets = read_targets(cfg, data)
    names = set()
    for path in swept:
        attack = instantiate(make_config("experiment=recsys_tcd_ml100k_replay", f"attack.path={path}").attack.method)
        assert attack_shape(cfg, Limitless(), data, targets, attack)[0] in (9, 18, 28)
        names.add(attack.attack_name)
    assert names == {"random", "average", "aush", "pga", "tna"}
