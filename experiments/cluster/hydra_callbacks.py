"""Hydra callbacks: checks that must run before Hydra creates the run dir."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from common.errors import exit_with_error


def _first_existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def unwritable_reason(directory: Path) -> str | None:
    """Why `directory` cannot be created or written to, or None when it can."""
    parent = _first_existing_parent(directory.absolute())
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable"
    probe = parent / f".fivefold_write_test_{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        return f"cannot create folders under {parent} ({exc.strerror})"
    return None


class CheckOutputDir(Callback):
    """Fail in one line, before any work, when the run or sweep dir cannot be written."""

    @staticmethod
    def _check(directory: str, key: str) -> None:
        reason = unwritable_reason(Path(directory))
        if reason:
            exit_with_error(f"{key}={directory}: {reason}; set {key} or paths.log_dir to a writable folder")

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")
