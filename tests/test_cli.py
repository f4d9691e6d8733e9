"""The command line as a user runs it: default run, sweeps, launchers, Optuna, DDP, W&B, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from experiments.analysis.aggregate import main as aggregate_main
from experiments.core.cli_help import asks_for_help, config_groups, help_text, hydra_options
from tests.conftest import CONF, REPO, cli_env
from tests.wandb_records import summary_config_group

FAST = ("debug=fast",)


def completed_jobs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent for p in sweep_dir.glob("*/metrics.json"))


def test_default_run_writes_the_run_dir_and_prints_a_table(run_cli, tmp_path: Path) -> None:
    result = run_cli("task.num_seeds=3", "trainer.max_epochs=20", "logger=csv")
    assert result.returncode == 0, result.stderr
    assert "| freeze_informed |" in result.stdout
    run = tmp_path / "run"
    for name in (
        ".hydra/config.yaml",
        "config_resolved.yaml",
        "metrics.json",
        "results.md",
        "records.jsonl",
        "plots/learning_curves.png",
        "checkpoints/population/last.ckpt",
        "run.log",
    ):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) >= {
        "freeze_informed/val_error_median",
        "fluid/epochs_to_cutoff_median",
        "freeze_informed_vs_fluid/val_error_mwu_p",
    }
    assert list((run / "csv").rglob("metrics.csv")), "the CSV logger wrote its metrics"


def test_multirun_of_two_jobs_then_aggregate(run_cli, tmp_path: Path, capsys) -> None:
    result = run_cli("-m", *FAST, "seed=0,1")
    assert result.returncode == 0, result.stderr
    jobs = completed_jobs(tmp_path / "multirun")
    assert len(jobs) == 2
    assert yaml.safe_load((jobs[1] / ".hydra" / "overrides.yaml").read_text()) == ["debug=fast", "seed=1"]
    for job in jobs:  # run.py recorded the launch: each job compares the tree on disk with it
        record = json.loads((job / "provenance.json").read_text())
        assert record["launch_git_commit"] == record["git_commit"] and record["conf_changed_since_launch"] == []
    assert aggregate_main([str(tmp_path / "multirun"), "--compare", "freeze_informed:fluid"]) == 0
    table = (tmp_path / "multirun" / "aggregate" / "summary.md").read_text()
    assert "freeze_informed" in table and "val_error" in table
    assert list((tmp_path / "multirun" / "aggregate").glob("*.png"))


def test_joblib_launcher_runs_jobs_in_parallel_processes(run_cli, tmp_path: Path) -> None:
    result = run_cli("-m", *FAST, "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", fresh_process=True)
    assert result.returncode == 0, result.stderr
    assert "Joblib.Parallel" in result.stdout + result.stderr
    assert len(completed_jobs(tmp_path / "multirun")) == 2


def test_submitit_local_launcher_runs_the_cluster_code_path(run_cli, tmp_path: Path) -> None:
    result = run_cli("-m", *FAST, "seed=0,1", "hydra/launcher=submitit_local", fresh_process=True)
    assert result.returncode == 0, result.stderr
    assert len(completed_jobs(tmp_path / "multirun")) == 2
    assert list((tmp_path / "multirun" / ".submitit").rglob("*_result.pkl"))


def test_optuna_search_of_two_trials_optimises_the_returned_metric(run_cli, tmp_path: Path) -> None:
    storage = tmp_path / "optuna.db"
    result = run_cli(
        "-m",
        "hparams_search=polarity_xor_optuna",
        "hydra.sweeper.n_trials=2",
        *FAST,
        f"hydra.sweeper.storage=sqlite:///{storage}",
    )
    assert result.returncode == 0, result.stderr
    best = yaml.safe_load((tmp_path / "multirun" / "optimization_results.yaml").read_text())
    values = [
        json.loads((job / "metrics.json").read_text())["freeze_informed/val_error_median"]
        for job in completed_jobs(tmp_path / "multirun")
    ]
    assert len(values) == 2 and best["best_value"] == pytest.approx(min(values))
    assert storage.stat().st_size > 0


def test_ddp_with_two_cpu_processes(run_cli, tmp_path: Path) -> None:
    result = run_cli(
        "trainer=ddp_cpu",
        "trainer.max_epochs=3",
        "task.num_seeds=2",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        fresh_process=True,
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "distributed_backend=gloo" in output and "Starting with 2 processes" in output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= metrics["freeze_informed/val_error_median"] <= 1  # curves came back from the spawned ranks


def test_wandb_offline_runs_hold_their_own_metrics_grouped_per_sweep(run_cli, tmp_path: Path) -> None:
    result = run_cli(
        "-m", "seed=0,1", "task.num_seeds=2", "trainer.max_epochs=3", "logger=wandb", "trainer.enable_progress_bar=false"
    )
    assert result.returncode == 0, result.stderr
    groups = set()
    for job in completed_jobs(tmp_path / "multirun"):
        run_files = list((job / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(run_files) == 1, "one W&B run per job (wandb.finish between jobs)"
        summary, config, group = summary_config_group(run_files[0])
        metrics = json.loads((job / "metrics.json").read_text())
        assert summary["freeze_informed/val_error_median"] == pytest.approx(metrics["freeze_informed/val_error_median"])
        assert "val/acc" in summary  # per-epoch history went through Lightning's logger
        assert config["task"]["name"] == "polarity" and config["seed"] == int(job.name)
        assert list((job / "wandb").glob("offline-run-*/files/media/images/plots/*.png"))
        groups.add(group)
    assert len(groups) == 1 and groups != {""}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("model=nope",), "Could not find 'model/nope'"),
        (("foo=1",), "Could not override 'foo'"),
        (("dataset.n_train=abc",), "error: dataset.n_train='abc' has type str"),
        (
            ("model=polarity_cnn", "dataset=fashion_mnist", "paths.data_dir=/nonexistent"),
            "error: missing data file /nonexistent/images/fashion-mnist/train-images-idx3-ubyte.gz",
        ),
        (("hydra.run.dir=/proc/forbidden",), "error: hydra.run.dir=/proc/forbidden"),
        (
            ("experiment=polarity_fashion_mnist", "hydra.mode=RUN", "polarity.source.checkpoint=requirements.txt"),
            "error: polarity.source.checkpoint=requirements.txt: not a readable torch checkpoint",
        ),
        (("ckpt_path=last",), "error: ckpt_path=last: no checkpoint at"),
    ],
)
def test_bad_input_gives_one_clear_message_and_no_metrics(run_cli, tmp_path: Path, args, message: str) -> None:
    result = run_cli(*args, "logger=none", *FAST)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("metrics.json"))


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_gpu_without_one_names_the_trainer(run_cli, tmp_path: Path) -> None:
    result = run_cli("trainer=gpu", "logger=none", *FAST)
    assert result.returncode == 2
    assert "error: Error in call to target 'lightning.pytorch.trainer.trainer.Trainer'" in result.stderr
    assert "No supported gpu backend found" in result.stderr and "full_key: trainer" in result.stderr
    assert "Traceback" not in result.stderr and not list(tmp_path.rglob("metrics.json"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("model=nope",), "error: In 'task/polarity': Could not find 'model/nope'; options in 'model': "),
        (
            ("task=nope",),
            "error: In 'config': Could not find 'task/nope'; options in 'task': cqil, erc, memorability, polarity, recsys",
        ),
        (
            ("model.nope=1",),
            "error: Could not override 'model.nope'. To append to your config use +model.nope=1 (Key 'nope' is not in struct)",
        ),
        (
            ("-m", "experiment=recsys_tcd_ml100k", "attack=coattack,gcoattack", "attack.method.hinge=reference"),
            "error: Could not override 'attack.method.hinge'. To append to your config use +attack.method.hinge=reference "
            "(Key 'hinge' is not in struct); in a sweep over attack=coattack,gcoattack, force keys of those options "
            "with ++attack.method.hinge=reference",
        ),
        (("model.network._target_=models.nowhere.Net",), "error: model.network._target_: cannot import 'models.nowhere.Net'"),
        (("dataset.n_train=abc",), "error: dataset.n_train='abc' has type str, but data.xor.XorDataModule expects int"),
    ],
)
def test_composition_and_config_errors_are_one_line_with_exit_status_2(run_cli, args: tuple[str, ...], message: str) -> None:
    result = run_cli(*args, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip().splitlines()[0]]
    assert result.stderr.startswith(message)


def test_a_config_error_answers_before_torch_is_imported() -> None:
    """The static signature pass catches a bad value without loading torch (the import alone takes seconds)."""
    probe = subprocess.run(
        [sys.executable, "-X", "importtime", "run.py", "dataset.n_train=abc"],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert probe.returncode == 2
    assert not [line for line in probe.stderr.splitlines() if line.rstrip().endswith("| torch")]


def help_groups(help_output: str) -> dict[str, list[str]]:
    """{group: options} as `--help` lists them: the project's own, before any `; from Hydra ...` part."""
    section = help_output.split("== Configuration groups ==")[1].split("== Config ==")[0]
    groups = {}
    for line in section.splitlines():
        group, colon, options = line.partition(": ")
        if colon:
            groups[group] = options.split("; ")[0].split(", ")
    return groups


@pytest.mark.parametrize("args", [("--help",), ("-h",), ("model=polarity_cnn", "logger=none", "--help")])
def test_help_lists_every_config_group_and_option_file_in_conf(args: tuple[str, ...]) -> None:
    result = subprocess.run(
        [sys.executable, "run.py", *args], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    expected = {
        directory.relative_to(CONF).as_posix(): sorted(path.stem for path in directory.glob("*.yaml"))
        for directory in sorted(CONF.rglob("*"))
        if directory.is_dir() and any(directory.glob("*.yaml"))
    }
    assert {"model", "hydra/launcher"} <= set(expected)
    listed = help_groups(result.stdout)
    assert listed == expected  # every group and every option file, nothing else (no README, no .yml, no config.yaml)
    assert list(listed) == sorted(listed)
    assert result.stdout.startswith("The single entry point: `python run.py")
    assert "python run.py [group=option ...] --cfg job" in result.stdout and "python run.py --hydra-help" in result.stdout


def test_help_lists_only_yaml_files_of_group_directories(tmp_path: Path) -> None:
    for name in ("model/b.yaml", "model/a.yaml", "model/README.md", "model/old.yml", "hydra/launcher/x.yaml", "config.yaml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}\n")
    for name in ("notes/plan.txt", "model/__pycache__/c.yaml", ".hidden/d.yaml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}\n")
    assert config_groups(tmp_path) == {"hydra/launcher": ["x"], "model": ["a", "b"]}
    assert help_groups(help_text("header", tmp_path)) == {"hydra/launcher": ["x"], "model": ["a", "b"]}


def test_help_lists_the_options_hydra_itself_finds_for_each_group() -> None:
    """The launchers Hydra and its plugins register (read from their source) and conf/'s files, as Hydra lists them."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            loader = GlobalHydra.instance().config_loader()
            for group, options in config_groups().items():
                extra = hydra_options(group) if group.startswith("hydra/") else []
                if group == "hydra":
                    extra = ["config"]  # Hydra's own schema for the hydra node, not an option to pick
                assert sorted({*options, *extra}) == sorted(loader.get_group_options(group)), group
    finally:
        GlobalHydra.instance().clear()
    assert {"basic", "joblib", "submitit_local"} <= set(hydra_options("hydra/launcher"))


@pytest.mark.parametrize(
    ("argv", "answers"),
    [
        (["--help"], True),
        (["-h", "seed=1"], True),
        (["--hydra-help"], False),
        (["--cfg", "job"], False),
        (["tag=--help"], False),
        (["-cd", "other_conf", "--help"], False),  # Hydra's own help lists what another config dir adds
        (["--config-path=other", "--help"], False),
    ],
)
def test_help_is_answered_here_only_for_this_repos_conf(argv: list[str], answers: bool) -> None:
    assert asks_for_help(argv) is answers


def test_help_answers_before_hydra_torch_or_lightning_is_imported() -> None:
    probe = subprocess.run(
        [sys.executable, "-X", "importtime", "run.py", "--help"],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert probe.returncode == 0
    imported = {line.rsplit("|", 1)[-1].strip() for line in probe.stderr.splitlines() if line.startswith("import time:")}
    assert "experiments.core.cli_help" in imported
    assert not imported & {"torch", "lightning", "hydra"}
