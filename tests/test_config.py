"""Every config option composes, and every `_target_` in it matches what it instantiates."""

from __future__ import annotations

import pytest
from hydra.utils import get_method
from omegaconf import OmegaConf

from common.errors import UserError
from experiments.core.validation.config_check import check_targets, imported_signature, read_signature
from tests.conftest import CONF, compose_config, experiment_aliases

ALIASES = experiment_aliases()
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if p.stem not in ALIASES)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def composed(*overrides: str, signature_of=imported_signature):
    cfg = compose_config(list(overrides))
    check_targets(cfg, signature_of=read_signature)  # the fast pass must accept every shipped config
    check_targets(cfg, signature_of=signature_of)
    for key in ("model", "dataset", "task"):
        OmegaConf.resolve(cfg[key])
    return cfg


def test_there_is_one_experiment_file_per_paper_setting() -> None:
    assert {"polarity_xor", "polarity_xor_sweep", "polarity_fashion_mnist", "polarity_nonneg_xor"} <= set(EXPERIMENTS)


def test_experiment_names_say_their_task() -> None:
    tasks = options("task")
    assert [name for name in EXPERIMENTS if name.split("_")[0] not in tasks] == []


def test_old_experiment_names_compose_exactly_their_new_files() -> None:
    assert ALIASES["cmath_iemocap"] == "erc_cmath_iemocap" and ALIASES["tcd_ml100k"] == "recsys_tcd_ml100k"
    for old, new in ALIASES.items():
        a, b = (OmegaConf.to_container(compose_config([f"experiment={name}"])) for name in (old, new))
        a.pop("hydra"), b.pop("hydra")  # Hydra's record of the choices names the file that was asked for
        assert a == b, old


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_against_its_own_task(experiment: str) -> None:
    """Each experiment file is checked with the task it selects, so one task's files never break another's."""
    cfg = composed(f"experiment={experiment}")
    assert cfg.task.name in options("task")
    assert callable(get_method(cfg.task.runner))
    assert cfg.model.name and cfg.dataset.name  # the loggers name and tag runs with them
    for group, owner in TASK_GROUPS.items():  # a task-specific node belongs to its own task only
        assert has_node(cfg, package_of(group)) == (cfg.task.name == owner), group


def task_groups() -> dict[str, str]:
    """Groups that only one task's defaults list selects (`/polarity: xor` in conf/task/polarity.yaml),
    read from conf/task/*.yaml, so a sixth task's own groups are tested without editing this file."""
    owners: dict[str, str] = {}
    for path in sorted((CONF / "task").glob("*.yaml")):
        for entry in OmegaConf.load(path).get("defaults", []):
            if isinstance(entry, str) or len(entry) != 1:
                continue
            group = str(next(iter(entry))).lstrip("/")
            if group not in ("model", "dataset"):
                owners[group] = path.stem
    return owners


TASK_GROUPS = task_groups()


def package_of(group: str) -> str:
    """Where a group's options land in the config: their `# @package` line, else the group's own name."""
    first = next(iter(sorted((CONF / group).glob("*.yaml")))).read_text().splitlines()[0]
    return first.split("@package", 1)[1].strip() if "@package" in first else group


def has_node(cfg, dotted: str) -> bool:
    node = cfg
    for key in dotted.split("."):
        if not OmegaConf.is_dict(node) or key not in node:
            return False
        node = node[key]
    return True


def test_task_groups_are_read_from_the_task_files() -> None:
    assert TASK_GROUPS["polarity"] == "polarity" and TASK_GROUPS["lr_schedule"] == "erc"
    assert {TASK_GROUPS[g] for g in ("attack", "defense")} == {"recsys"}


@pytest.mark.parametrize("group", ["task", "model", "dataset", *TASK_GROUPS, "trainer", "logger", "callbacks"])
def test_every_option_of_every_group_composes(group: str) -> None:
    task = [f"task={TASK_GROUPS[group]}"] if group in TASK_GROUPS else []
    for option in options(group):
        composed(*task, f"{group}={option}")


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
    monkeypatch.setattr("experiments.core.resolvers.wandb_online_problem", lambda: None)  # a key and a network
    assert compose_config([]).logger.wandb.offline is False
    assert compose_config(["logger.wandb.offline=false"]).logger.wandb.offline is False


def test_wandb_online_without_a_key_falls_back_to_offline_with_one_warning(monkeypatch, tmp_path, caplog) -> None:
    import experiments.core.resolvers as resolvers

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc there
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setattr(resolvers, "_online_checks", {})
    assert compose_config([]).logger.wandb.offline is True
    assert "no W&B API key" in caplog.text and caplog.text.count("logging offline instead") == 1
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens: unreachable at once
    assert compose_config([]).logger.wandb.offline is True
    assert "cannot reach 127.0.0.1:9" in caplog.text


def test_wandb_runs_are_tagged_with_task_model_dataset() -> None:
    cfg = compose_config(["model=polarity_cnn", "dataset=fashion_mnist"])
    assert list(cfg.logger.wandb.tags) == ["polarity", "polarity_cnn", "fashion_mnist"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dataset.n_train=abc", r"dataset.n_train='abc' has type str, but data.xor.XorDataModule expects int"),
        ("trainer.max_epochs=ten", r"trainer.max_epochs='ten'.*expects"),
        ("model.lr=fast", r"model.optimizer.lr='fast' \(set by \$\{model.lr\}\) has type str, but torch.optim.Adam expects"),
        ("+dataset.shuffle_everything=true", r"dataset.shuffle_everything: 'shuffle_everything' is not a parameter"),
        ("model.network._target_=models.nowhere.Net", r"model.network._target_: cannot import 'models.nowhere.Net'"),
    ],
)
@pytest.mark.parametrize("signature_of", [read_signature, imported_signature], ids=["from_source", "imported"])
def test_wrong_types_and_keys_name_the_key(override: str, message: str, signature_of) -> None:
    """Both passes name the key: the one that reads source files (before torch loads) and the import one."""
    cfg = compose_config([override])
    with pytest.raises(UserError, match=message):
        check_targets(cfg, signature_of=signature_of)
