"""Shared fixtures: the data root, in-process config composition, and the command line (in this process or a fresh one)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

import experiments.core.resolvers  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
DATA_DIR = Path(os.environ.get("FIVEFOLD_DATA_DIR", REPO.parent / "shared" / "data")).resolve()
# pytest runs two workers (pytest.ini): one intra-op thread each, in-process and in every `python run.py`
# the tests start, so the workers do not oversubscribe the cores. Tests that time threads set their own.
TEST_THREADS = 1
torch.set_num_threads(TEST_THREADS)


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """Every test starts on TEST_THREADS threads, whatever a previous test left set."""
    torch.set_num_threads(TEST_THREADS)
    yield
    torch.set_num_threads(TEST_THREADS)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"real data root {DATA_DIR} is absent (set FIVEFOLD_DATA_DIR)")
    return DATA_DIR


def compose_config(overrides: Sequence[str], output_dir: Path | None = None) -> DictConfig:
    """The config `python run.py <overrides>` would get, with HydraConfig set as in a real run."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., DictConfig]:
    def make(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        return compose_config([f"paths.data_dir={DATA_DIR}", *overrides], output_dir or tmp_path / "run")

    yield make
    GlobalHydra.instance().clear()


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(FIVEFOLD_DATA_DIR=str(DATA_DIR), WANDB_MODE="offline", WANDB_SILENT="true", PYTHONHASHSEED="0")
    env.update({name: str(TEST_THREADS) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    env.pop("WANDB_API_KEY", None)
    return env


def run_in_process(args: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """run.py as __main__ with sys.argv, the environment and the console redirected: `python run.py *args` without
    the seconds of start-up a fresh interpreter spends on imports. Exit status and output as a subprocess's."""
    import contextlib
    import io
    import runpy
    import traceback

    stdout, stderr = io.StringIO(), io.StringIO()
    saved_argv, saved_env, saved_cwd = sys.argv, dict(os.environ), Path.cwd()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["run.py", *args]
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                runpy.run_path(str(REPO / "run.py"), run_name="__main__")  # as __main__: Hydra finds conf/ beside it
                status = 0
            except SystemExit as stop:
                status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
                if stop.code is not None and not isinstance(stop.code, int):
                    print(stop.code, file=sys.stderr)
            except Exception:
                traceback.print_exc()
                status = 1
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        GlobalHydra.instance().clear()
        for handler in [h for h in root.handlers if h not in saved_handlers]:
            root.removeHandler(handler)
            handler.close()  # Hydra's run.log handler: flushed and closed as at a process's exit
        root.handlers[:0] = [h for h in saved_handlers if h not in root.handlers]
        root.setLevel(saved_level)
    return subprocess.CompletedProcess(["run.py", *args], status, stdout.getvalue(), stderr.getvalue())


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run `python run.py *args` with run/sweep dirs under tmp_path unless the args set them: in this process
    by default, in a fresh one with `fresh_process=True` (launchers that start processes, DDP, time limits)."""

    def run(*args: str, timeout: int = 300, fresh_process: bool = False) -> subprocess.CompletedProcess:
        extra = []
        if not any(a.startswith("hydra.run.dir=") for a in args):
            extra.append(f"hydra.run.dir={tmp_path / 'run'}")
        if not any(a.startswith("hydra.sweep.dir=") for a in args):
            extra.append(f"hydra.sweep.dir={tmp_path / 'multirun'}")
        if not fresh_process:
            return run_in_process([*args, *extra], cli_env())
        return subprocess.run(
            [sys.executable, "run.py", *args, *extra], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=timeout
        )

    return run


def experiment_aliases() -> dict[str, str]:
    """Old experiment names kept for one release: files whose whole content is `defaults: [<new name>]`."""
    aliases = {}
    for path in sorted((CONF / "experiment").glob("*.yaml")):
        body = OmegaConf.load(path)
        defaults = body.get("defaults")
        if set(body) == {"defaults"} and len(defaults) == 1 and (CONF / "experiment" / f"{defaults[0]}.yaml").is_file():
            aliases[path.stem] = str(defaults[0])
    return aliases


def experiments_of_task(task: str) -> list[str]:
    """The conf/experiment/*.yaml files that select `task`, so each task's tests loop over its own files only."""
    names = []
    aliases = experiment_aliases()
    for path in sorted((CONF / "experiment").glob("*.yaml")):
        if path.stem in aliases:
            continue  # an old name composes its new file: testing both would run the same experiment twice
        try:
            cfg = compose_config([f"experiment={path.stem}"])
        except Exception:  # another task's file that does not compose is that task's test to report
            continue
        if cfg.task.name == task:
            names.append(path.stem)
    GlobalHydra.instance().clear()
    return names


@pytest.hookimpl(tryfirst=True)  # before xdist's loadgroup scheduler reads the xdist_group markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The quick tier (`-m "not slow"`) leaves out what needs a cluster or the whole command line (a full
    `python run.py`, in this process or a fresh one); the full suite, CI's, runs everything."""
    for item in items:
        if item.get_closest_marker("slurm") or "run_cli" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.xdist_group("slurm"))  # one worker owns the local cluster
