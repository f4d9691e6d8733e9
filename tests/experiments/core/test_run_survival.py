"""Runs that survive: checkpoints during a fit, resume only into the same config, exclusive run dirs,
stale results removed, and every bad value stopped in one line before any work."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.demos.boring_classes import BoringModel

from common.errors import UserError
from data.samplers import shuffled
from experiments.core.checkpointing import ResumableCheckpoint
from experiments.core.run_dir import RunDirLock, check_resume_config
from experiments.core.runner import run_task
from tests.conftest import REPO, cli_env, run_in_process

# Guards against a hung process, never a speed bound: a loaded 2-core machine may take minutes per run.
PATIENCE_S = 900
QUICK = ["logger=none", "trainer.enable_progress_bar=false", "task.num_seeds=2", "dataset.n_train=40"]


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def start(run_dir: Path, *overrides: str, base: list[str] = QUICK) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "run.py", *base, f"hydra.run.dir={run_dir}", *overrides],
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_here(run_dir: Path, *overrides: str, base: list[str] = QUICK) -> None:
    """`python run.py` in this process, for runs nothing kills."""
    result = run_in_process([*base, f"hydra.run.dir={run_dir}", *overrides], cli_env())
    assert result.returncode == 0, result.stderr[-2000:]


def wait_for(path: Path, process: subprocess.Popen, timeout: float = PATIENCE_S) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_fit_killed_after_a_mid_fit_checkpoint_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    epochs = ["trainer.max_epochs=30"]  # ~0.15 s an epoch: the kill lands seconds before the fit would end
    run_here(tmp_path / "straight", *epochs)

    victim = start(tmp_path / "killed", *epochs)
    checkpoint = tmp_path / "killed" / "checkpoints" / "population" / "last.ckpt"
    wait_for(checkpoint, victim)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(60) == -signal.SIGKILL
    assert not (tmp_path / "killed" / "metrics.json").exists(), "the kill came after the fit ended; nothing was tested"

    run_here(tmp_path / "killed", *epochs)
    assert "population: resuming from" in (tmp_path / "killed" / "run.log").read_text()
    assert read_metrics(tmp_path / "killed") == read_metrics(tmp_path / "straight")


ERC_QUICK = [
    "task=erc",
    "dataset=synthetic_erc",
    "task.num_seeds=1",
    "task.max_epochs=6",
    "dataset.corpus.num_dialogues=[40,10,10]",
    "erc.conditions.symmetric=null",
    "erc.conditions.bigru=null",
    "logger=none",
    "trainer.enable_progress_bar=false",
]


def checkpoint_epoch(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=False)["epoch"])
    except (FileNotFoundError, EOFError, RuntimeError):
        return -1


@pytest.mark.slow
def test_an_erc_fit_with_dropout_killed_after_an_epoch_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    """CMATH trains with dropout, reparameterisation noise and a shuffled loader: all continue exactly."""
    run_here(tmp_path / "straight", base=ERC_QUICK)

    victim = start(tmp_path / "killed", base=ERC_QUICK)
    checkpoint = tmp_path / "killed" / "checkpoints" / "cmath_seed0" / "last.ckpt"
    wait_for(checkpoint, victim)
    deadline = time.monotonic() + PATIENCE_S
    while checkpoint_epoch(checkpoint) < 1:  # after epoch 1: the resumed epochs draw from restored states
        assert victim.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(60) == -signal.SIGKILL
    assert not (tmp_path / "killed" / "metrics.json").exists(), "the kill came after the fit ended; nothing was tested"

    run_here(tmp_path / "killed", base=ERC_QUICK)
    assert "Restoring states from the checkpoint" in (tmp_path / "killed" / "run.log").read_text()
    assert read_metrics(tmp_path / "killed") == read_metrics(tmp_path / "straight")


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_for_requeue(tmp_path: Path) -> None:
    process = start(
        tmp_path / "run",
        "trainer.max_epochs=100000",
        "callbacks.checkpoint.every_n_epochs=0",
        "callbacks.checkpoint.every_n_minutes=null",
    )
    log_file = tmp_path / "run" / "run.log"
    wait_for(log_file, process)
    deadline = time.monotonic() + PATIENCE_S
    while "and on SIGTERM/SIGUSR1/SIGUSR2" not in log_file.read_text():  # the fit has started: handlers are in place
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    assert not (tmp_path / "run" / "checkpoints" / "population" / "last.ckpt").exists()  # no periodic saves asked
    process.send_signal(signal.SIGTERM)
    assert process.wait(PATIENCE_S) == 128 + signal.SIGTERM
    assert (tmp_path / "run" / "checkpoints" / "population" / "last.ckpt").is_file()
    assert "received SIGTERM: saved" in (tmp_path / "run" / "run.log").read_text()
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_resume_into_a_different_config_is_refused_naming_the_keys(make_config, tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    run_task(make_config(*QUICK, "trainer.max_epochs=3", "model.lr=0.03", output_dir=run_dir), run_dir)
    first = read_metrics(run_dir)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_task(make_config(*QUICK, "trainer.max_epochs=3", "model.lr=0.01", output_dir=run_dir), run_dir)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "another config (model.lr: 0.03 -> 0.01" in err and "ckpt_path=none" in err
    assert not (run_dir / "metrics.json").exists()  # the old results no longer sit beside the new config
    run_task(make_config(*QUICK, "trainer.max_epochs=3", "model.lr=0.01", "ckpt_path=none", output_dir=run_dir), run_dir)
    assert read_metrics(run_dir) != first  # a fresh start, not the old checkpoint
    assert list(tmp_path.glob("run/checkpoints.replaced-*"))  # the old checkpoints were moved aside, not mixed in
    run_task(make_config(*QUICK, "trainer.max_epochs=3", "model.lr=0.01", "logger=csv", output_dir=run_dir), run_dir)


@pytest.mark.parametrize(("key", "old", "new"), [("accelerator", "cpu", "gpu"), ("devices", 1, 2), ("num_nodes", 1, 2)])
def test_a_resume_onto_another_device_or_world_size_is_refused(tmp_path: Path, key: str, old, new) -> None:
    """Another device draws other random numbers and another world size shards batches otherwise: the
    resumed run would not be the uninterrupted one."""
    run_dir = tmp_path / "run"

    def resolved(value, max_epochs: int = 3) -> dict:
        return {"seed": 0, "trainer": {key: value, "max_epochs": max_epochs, "strategy": "auto"}}

    check_resume_config(run_dir, resolved(old), None, True)
    with pytest.raises(UserError, match=rf"another config \(trainer\.{key}: "):
        check_resume_config(run_dir, resolved(new), None, True)
    check_resume_config(run_dir, resolved(old, max_epochs=9), None, True)  # a longer fit still resumes


def test_a_locked_run_dir_is_refused_in_one_line(make_config, tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = RunDirLock(run_dir)
    lock.acquire()
    capsys.readouterr()
    try:
        with pytest.raises(SystemExit):
            run_task(make_config(*QUICK, output_dir=run_dir), run_dir)
        err = capsys.readouterr().err
        assert "is in use by pid" in err and err.count("\n") == 1
    finally:
        lock.release()
    run_task(make_config(*QUICK, "trainer.max_epochs=2", output_dir=run_dir), run_dir)  # free again


def test_a_validation_failure_in_a_finished_run_dir_leaves_no_stale_results(make_config, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_task(make_config(*QUICK, "trainer.max_epochs=2", output_dir=run_dir), run_dir)
    assert (run_dir / "metrics.json").exists() and (run_dir / "records.jsonl").exists()
    with pytest.raises(SystemExit):
        run_task(make_config(*QUICK, "dataset.n_train=abc", output_dir=run_dir), run_dir)
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "records.jsonl").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["seed=-1"], "seed=-1 must be >= 0"),
        (["model.lr=-0.1"], "model.optimizer.lr=-0.1 (set by ${model.lr}) must be > 0"),
        (["model.lr=nan"], "must be a finite number"),
        (["trainer.max_epochs=0"], "trainer.max_epochs=0 must be >= 1"),
        (["model=polarity_cnn", "dataset=fashion_mnist", "task.num_seeds=0"], "task.num_seeds=0 must be >= 1"),
        (["task.num_seeds=0"], "task.num_seeds=0 must be >= 1"),
        (["polarity.eps=-1"], "polarity.eps=-1 must be > 0"),
        (["dataset.n_train=0"], "dataset.n_train=0"),
    ],
)
def test_bad_values_stop_in_one_line_before_any_work(
    overrides: list[str], message: str, make_config, tmp_path: Path, capsys
) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        run_task(make_config("logger=csv", *overrides, output_dir=run_dir), run_dir)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and "Error in call to target" not in err
    assert not (run_dir / "csv").exists() and not (run_dir / "metrics.json").exists()  # no logger run was started


def test_a_source_checkpoint_of_another_architecture_is_refused(make_config, tmp_path: Path, capsys) -> None:
    import torch

    source = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, source)
    with pytest.raises(SystemExit):
        run_task(
            make_config(
                "experiment=polarity_fashion_mnist",
                "dataset=digits",
                "dataset.n_train=50",
                "dataset.n_val=100",
                "debug=fast",
                f"polarity.source.checkpoint={source}",
            ),
            tmp_path / "run",
        )
    assert "no layer of the source network matches this network (0 of" in capsys.readouterr().err


def test_a_directory_where_a_data_file_should_be_is_named_as_such(make_config, tmp_path: Path, capsys) -> None:
    root = tmp_path / "data"
    (root / "images" / "fashion-mnist" / "train-images-idx3-ubyte.gz").mkdir(parents=True)
    with pytest.raises(SystemExit):
        run_task(
            make_config("model=polarity_cnn", "dataset=fashion_mnist", f"paths.data_dir={root}", "debug=fast"), tmp_path / "run"
        )
    assert "is a directory, but a data file is expected there" in capsys.readouterr().err


def test_keys_added_with_plus_are_warned_about(run_cli) -> None:
    result = run_cli("+foo=1", "debug=fast")
    assert result.returncode == 0, result.stderr
    assert "+foo=1 adds a key that no config file declares" in result.stdout + result.stderr


def test_default_run_dirs_are_unique_within_one_second() -> None:
    from experiments.core.resolvers import run_id

    assert run_id() != run_id()


class _SigtermAfterBatch(Callback):
    """Sends SIGTERM after ResumableCheckpoint's batch hook: Lightning's loop, not the callback, stops the fit."""

    def __init__(self, at_batch: int) -> None:
        self.at_batch = at_batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == 1 and batch_idx == self.at_batch:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("every_n_epochs", [0, 1])
def test_a_sigterm_in_lightnings_window_still_exits_for_requeue(tmp_path: Path, every_n_epochs: int, caplog) -> None:
    checkpoint = ResumableCheckpoint(str(tmp_path), every_n_epochs=every_n_epochs, every_n_minutes=None)
    trainer = Trainer(
        max_epochs=5,
        callbacks=[checkpoint, _SigtermAfterBatch(at_batch=1)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with caplog.at_level(logging.WARNING), pytest.raises(SystemExit) as stop:
        trainer.fit(BoringModel())
    assert stop.value.code == 128 + signal.SIGTERM  # not Lightning's own status 0, which would end a SLURM job as done
    assert checkpoint.path.is_file()
    epoch = torch.load(checkpoint.path, weights_only=False)["epoch"]
    assert epoch == (1 if every_n_epochs == 0 else 0)  # mid-epoch save only when no epoch-end saves were asked for
    assert "received SIGTERM" in caplog.text
    assert signal.getsignal(signal.SIGTERM) is not checkpoint._handle


class _RandomTrainingModel(BoringModel):
    """Dropout, numpy and Python draws in every step and a shuffled loader: a resume continues them all
    exactly only if the checkpoint carries every random-number state."""

    def __init__(self) -> None:
        super().__init__()
        self.dropout = torch.nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = 1.0 + 0.1 * float(np.random.rand()) + 0.1 * random.random()
        return self.layer(self.dropout(x)) * scale

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        data = torch.randn(48, 32, generator=torch.Generator().manual_seed(5))
        return torch.utils.data.DataLoader(data, batch_size=8, **shuffled(len(data), seed=3))


def fit_random_training(directory: Path, max_epochs: int, ckpt_path: Path | None = None) -> dict[str, torch.Tensor]:
    seed_everything(0, verbose=False)
    model = _RandomTrainingModel()
    trainer = Trainer(
        max_epochs=max_epochs,
        callbacks=[ResumableCheckpoint(str(directory), every_n_minutes=None)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=2,
    )
    trainer.fit(model, ckpt_path=ckpt_path)
    return model.state_dict()


def test_a_resume_continues_random_training_exactly(tmp_path: Path) -> None:
    straight = fit_random_training(tmp_path / "straight", max_epochs=3)
    fit_random_training(tmp_path / "resumed", max_epochs=1)  # the state a kill after epoch 1's save leaves
    checkpoint = tmp_path / "resumed" / "last.ckpt"
    without_states = torch.load(checkpoint, weights_only=False)
    without_states["callbacks"] = {}
    torch.save(without_states, tmp_path / "without_states.ckpt")

    resumed = fit_random_training(tmp_path / "resumed", max_epochs=3, ckpt_path=checkpoint)
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    # the same resume without the saved states diverges: the states, not luck, make it exact
    unseeded = fit_random_training(tmp_path / "unseeded", max_epochs=3, ckpt_path=tmp_path / "without_states.ckpt")
    assert not all(torch.equal(unseeded[k], straight[k]) for k in straight)
