"""Every config option composes, and every `_target_` in it matches what it instantiates."""
from __future__ import annotations


import pytest
from omegaconf import OmegaConf

from experiments.config_check import check_targets
from experiments.errors import UserError
from experiments.runner import CHECKED_GROUPS
from tests.conftest import CONF, compose_config

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def composed(*overrides: str):
    cfg = compose_config(list(overrides))
    check_targets(cfg, CHECKED_GROUPS)
    OmegaConf.resolve(cfg.model), OmegaConf.resolve(cfg.dataset), OmegaConf.resolve(cfg.task)
    return cfg


def test_there_is_one_experiment_file_per_paper_setting() -> None:
    assert {"polarity_xor", "polarity_xor_sweep", "polarity_fashion_mnist", "nonneg_xor"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment: str) -> None:
    cfg = composed(f"experiment={experiment}")
    assert cfg.task.runner and cfg.model.network._target_ and cfg.dataset._target_


@pytest.mark.parametrize("group", ["task", "model", "dataset", "polarity", "trainer", "logger", "callbacks"])
def test_every_option_of_every_group_composes(group: str) -> None:
    for option in options(group):
        composed(f"{group}={option}")


def test_the_default_is_the_quick_xor_experiment() -> None:
    default, quick = compose_config([]), compose_config(["experiment=polarity_xor"])
    for key in ("task", "model", "dataset", "polarity", "trainer"):
        assert OmegaConf.to_container(default[key]) == OmegaConf.to_container(quick[key]), key


def test_slurm_launcher_follows_the_trainer() -> None:
    cfg = compose_config(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (4, 4, 2)
    assert launcher.max_num_timeout > 0  # requeue on preemption / timeout


def test_wandb_is_offline_unless_asked(monkeypatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert compose_config([]).logger.wandb.offline is True
    monkeypatch.setenv("WANDB_MODE", "online")
    assert compose_config([]).logger.wandb.offline is False
    assert compose_config(["logger.wandb.offline=false"]).logger.wandb.offline is False


def test_wandb_runs_are_tagged_with_task_model_dataset() -> None:
    cfg = compose_config(["model=polarity_cnn", "dataset=fashion_mnist"])
    assert list(cfg.logger.wandb.tags) == ["polarity", "polarity_cnn", "fashion_mnist"]


@pytest.mark.parametrize(("override", "message"), [
    ("dataset.n_train=abc", r"dataset.n_train='abc' has type str, but data.xor.XorDataModule expects int"),
    ("trainer.max_epochs=ten", r"trainer.max_epochs='ten'.*expects"),
    ("model.lr=fast", r"model.optimizer.lr='fast' \(set by \$\{model.lr\}\) has type str, but torch.optim.Adam expects"),
    ("+dataset.shuffle_everything=true", r"dataset.shuffle_everything: 'shuffle_everything' is not a parameter"),
    ("model.network._target_=models.nowhere.Net", r"model.network._target_: cannot import 'models.nowhere.Net'"),
])
def test_wrong_types_and_keys_name_the_key(override: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        composed(override)
