"""The runner is task-neutral: a second task composes with its own defaults, a loop without a Trainer
resumes from `ctx.save_state` after a kill, artifacts are atomic, and logger steps continue across fits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from experiments.core.run_context import RunContext
from experiments.core.step_logger import ContinuingStepLogger
from tests.conftest import REPO, cli_env, compose_config, run_in_process

TOY_TASK = """# @package _global_
defaults:
  - /model: toy_model
  - /dataset: toy_data
  - _self_
task:
  name: toy
  runner: tests.toy.loop_task.run
  steps: 30
  kind: random_walk
  limit: null
"""


@pytest.fixture
def toy_conf(tmp_path: Path) -> Path:
    """A search path holding a throw-away task with its own model and dataset options."""
    conf = tmp_path / "toy_conf"
    for group, text in {
        "task/toy": TOY_TASK,
        "model/toy_model": "name: toy_model\nwidth: 3\n",
        "dataset/toy_data": "name: toy_data\nsize: 5\n",
    }.items():
        path = conf / f"{group}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return conf


def toy_overrides(conf: Path, *extra: str) -> list[str]:
    return [f"hydra.searchpath=[file://{conf}]", "task=toy", "logger=csv", *extra]


def test_polarity_composes_its_own_defaults_and_another_task_has_no_polarity_node(toy_conf: Path) -> None:
    polarity = compose_config(["task=polarity"])
    assert polarity.model.name == "polarity_mlp" and polarity.dataset.name == "xor5d" and "conditions" in polarity.polarity
    toy = compose_config(toy_overrides(toy_conf))
    assert "polarity" not in toy
    assert (toy.task.name, toy.model.name, toy.dataset.name) == ("toy", "toy_model", "toy_data")
    assert toy.dataset.size == 5 and "_target_" not in toy.dataset  # nothing of XOR leaked in


def test_debug_fast_bounds_any_task_through_task_limit(toy_conf: Path) -> None:
    cfg = compose_config(toy_overrides(toy_conf, "debug=fast"))
    assert cfg.task.limit == 2 and cfg.trainer.fast_dev_run is True


def run_toy(conf: Path, run_dir: Path, die_at: int | None = None) -> subprocess.CompletedProcess:
    """In a fresh process where the loop may kill itself (TOY_DIE_AT), else in this one."""
    env = cli_env()
    if die_at is None:
        return run_in_process(toy_overrides(conf, f"hydra.run.dir={run_dir}"), env)
    env["TOY_DIE_AT"] = str(die_at)
    return subprocess.run(
        [sys.executable, "run.py", *toy_overrides(conf, f"hydra.run.dir={run_dir}")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,  # a guard against a hang, not a speed bound (loaded machines are slow)
    )


@pytest.mark.slow
def test_a_loop_killed_between_save_state_calls_resumes_to_the_same_result(toy_conf: Path, tmp_path: Path) -> None:
    whole = run_toy(toy_conf, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    expected = json.loads((tmp_path / "whole" / "metrics.json").read_text())

    killed = run_toy(toy_conf, tmp_path / "killed", die_at=17)
    assert killed.returncode == -9  # SIGKILL: nothing ran after the kill
    assert not (tmp_path / "killed" / "metrics.json").exists()
    assert (tmp_path / "killed" / "checkpoints" / "loop" / "last.ckpt").is_file()

    again = run_toy(toy_conf, tmp_path / "killed", die_at=17)  # the same command, re-run (as a requeue does)
    assert again.returncode == 0, again.stderr
    resumed = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert resumed["loop/resumed_at"] == 17
    assert resumed["loop/total"] == expected["loop/total"]  # exactly: the RNG state was saved too
    assert (tmp_path / "killed" / "artifacts" / "per_item.csv").read_text().startswith("step,total\n30,")
    record = json.loads((tmp_path / "killed" / "records.jsonl").read_text())
    assert record["kind"] == "random_walk" and isinstance(record["total"], float)  # float32 coerced when added


def make_ctx(tmp_path: Path, *overrides: str) -> RunContext:
    cfg = compose_config(["task=polarity", "logger=csv", *overrides], output_dir=tmp_path / "run")
    return RunContext(cfg, tmp_path / "run")


def test_write_artifact_is_atomic_and_leaves_nothing_after_a_failure(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    path = ctx.write_artifact("scores/clip.csv", "a,b\n1,2\n")
    assert path == tmp_path / "run" / "artifacts" / "scores" / "clip.csv" and path.read_text() == "a,b\n1,2\n"

    def failing_writer(tmp: Path) -> None:
        tmp.write_bytes(b"half a vid")
        raise RuntimeError("encoder crashed")

    with pytest.raises(RuntimeError):
        ctx.write_artifact("crops/clip.mp4", failing_writer)
    assert list((tmp_path / "run" / "artifacts" / "crops").iterdir()) == []
    with pytest.raises(ValueError):
        ctx.write_artifact("../outside.txt", "x")


def test_load_state_follows_ckpt_path_rules(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    assert ctx.load_state("loop") is None  # nothing saved: start fresh
    ctx.save_state("loop", {"step": 3})
    assert ctx.load_state("loop") == {"step": 3}
    assert make_ctx(tmp_path, "ckpt_path=none").load_state("loop") is None
    other = tmp_path / "other"
    (other / "checkpoints" / "loop").mkdir(parents=True)
    (other / "checkpoints" / "loop" / "last.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="cannot read saved state"):
        make_ctx(tmp_path, f"ckpt_path={other}").load_state("loop")


class RecordingLogger:
    """Stands in for a Lightning logger: remembers (step, metrics)."""

    name, version, save_dir = "rec", 0, None

    def __init__(self) -> None:
        self.logged: list[tuple[int, dict]] = []

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.logged.append((step, dict(metrics)))

    def save(self) -> None:
        pass


def test_logger_steps_continue_across_fits_of_one_series(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    inner = RecordingLogger()
    for epoch in range(3):  # three consecutive fits of model0, each restarting at global step 0
        for name in ("model0", "model1"):
            view = ContinuingStepLogger(inner, ctx, name)
            for step in range(4):
                view.log_metrics({f"{name}/loss": float(epoch)}, step=step)
    steps = {name: [s for s, m in inner.logged if f"{name}/loss" in m] for name in ("model0", "model1")}
    assert steps["model0"] == steps["model1"] == list(range(12))  # one increasing curve each, no restarts
    ctx.log_metrics({"x": 1.0}, series="loop")
    ctx.log_metrics({"x": 2.0}, series="loop")
    assert ctx.next_step("loop") == 2


def test_task_result_coerces_numpy_and_torch_scalars_where_they_are_added() -> None:
    import numpy as np
    import torch

    from experiments.core.task import TaskResult

    result = TaskResult(
        metrics={"a/x": np.float32(0.5), "a/y": torch.tensor(2.0)}, records=[{"seed": np.int64(3), "acc": np.float32(0.25)}]
    )
    assert json.dumps(result.metrics) and json.dumps(result.records)
    assert result.records[0] == {"seed": 3, "acc": 0.25} and type(result.records[0]["seed"]) is int
    with pytest.raises(TypeError, match="a/z"):
        TaskResult(metrics={"a/z": np.zeros(3)})
    assert OmegaConf  # imported for the configs above


def test_a_source_data_set_error_names_the_source_key_not_the_target(make_config, tmp_path: Path, capsys) -> None:
    """digits has ~1,400 training images: the source's default 10,000 (classes 0-4, half the pool) is what
    is too many, so the message must name polarity.source.dataset.n_train, not dataset.n_train."""
    with pytest.raises(SystemExit):
        from experiments.core.runner import run_task

        run_task(
            make_config(
                "model=polarity_cnn",
                "dataset=digits",
                "polarity=transfer",
                "dataset.n_train=100",
                "dataset.pool=[0.5,1.0]",
                "debug=fast",
            ),
            tmp_path / "run",
        )
    err = capsys.readouterr().err
    assert "polarity.source.dataset.n_train=10000 must be between 1 and the training pool size" in err
    assert "lower polarity.source.dataset.n_train" in err


def test_ranks_of_one_launch_share_a_run_dir_name(monkeypatch) -> None:
    from experiments.core.resolvers import run_id

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc123")
    assert run_id() == run_id() == "torchrun_abc123"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun without --rdzv-id: nothing shared to use
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    assert run_id() == "slurm_77_0"
    monkeypatch.setenv("FIVEFOLD_RUN_ID", "mine")
    assert run_id() == "mine"


def test_global_rank_reads_the_launcher_environment_without_lightning(monkeypatch) -> None:
    import experiments.core.run_context as run_context

    monkeypatch.setattr(
        run_context.sys, "modules", {k: v for k, v in run_context.sys.modules.items() if not k.startswith(("torch", "lightning"))}
    )
    monkeypatch.setenv("RANK", "3")
    assert run_context.global_rank() == 3 and not run_context.is_global_zero()
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert run_context.is_global_zero()
