"""RunContext: what a task may touch of its run dir (loggers, checkpoints, plots) and nothing more.

Layout of a run dir (Hydra's output dir)::

    .hydra/config.yaml     the composed config, interpolations kept (written by Hydra)
    config_resolved.yaml   the same with every interpolation resolved
    run.log                the job's log
    checkpoints/<fit>/     Lightning checkpoints, one folder per fit (last.ckpt = resume point)
    plots/*.png            figures (also logged to W&B / TensorBoard)
    records.jsonl          one line per individual training run (condition, seed, metrics)
    metrics.json           final flat metrics, written last and atomically
    results.md             the human-readable results table
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from experiments.errors import UserError

RESUME_AUTO, RESUME_LAST, RESUME_NEVER = None, "last", "none"


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def is_global_zero() -> bool:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's config with every interpolation resolved (Hydra's own node left out)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    return container


class RunContext:
    """Owns the loggers, checkpoint folders and figure output of one run dir."""

    def __init__(self, cfg: DictConfig, output_dir: Path) -> None:
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.resolved_config = resolved_config(cfg)
        self._loggers: list[Logger] | None = None
        self._fits_resumed_from_file: set[str] = set()

    # -- loggers -------------------------------------------------------------------------------
    @property
    def loggers(self) -> list[Logger]:
        """Experiment loggers from `cfg.logger`, created on first use with the resolved config logged."""
        if self._loggers is None:
            nodes = self.cfg.get("logger") or {}
            self._loggers = [instantiate(node) for node in nodes.values() if node is not None]
            for logger in self._loggers:
                logger.log_hyperparams(self.resolved_config)
        return self._loggers

    def log_final_metrics(self, metrics: Mapping[str, float]) -> None:
        """Final metrics into the W&B run summary and as a last TensorBoard step. (The CSV logger keeps
        the per-epoch history only: its final numbers are metrics.json.)"""
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.summary.update(dict(metrics))
            elif isinstance(logger, TensorBoardLogger):
                logger.log_metrics(dict(metrics))
                logger.save()

    def save_figure(self, figure: Any, name: str) -> Path:
        """Save a matplotlib Figure (pyplot-free, so nothing global leaks) as plots/<name>.png and log it as an image to W&B / TensorBoard."""
        path = self.output_dir / "plots" / f"{name}.png"
        if not is_global_zero():
            return path  # other DDP ranks (SLURM tasks) run the same code; one writer is enough
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120, bbox_inches="tight")
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=f"plots/{name}", images=[str(path)])
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(f"plots/{name}", figure)
        return path

    def close(self, status: str = "success") -> None:
        """Finish W&B even on error, so the next multirun job does not log into this run."""
        for logger in self._loggers or []:
            logger.finalize(status)
        if any(isinstance(logger, WandbLogger) for logger in self._loggers or []):
            import wandb

            wandb.finish()

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint_dir(self, fit_name: str) -> Path:
        return self.output_dir / "checkpoints" / fit_name

    def resume_path(self, fit_name: str) -> str | None:
        """Checkpoint to resume `fit_name` from, per `cfg.ckpt_path` (see conf/config.yaml).

        A run dir as `ckpt_path` resumes every fit from its own `checkpoints/<fit>/last.ckpt` there;
        a single file only makes sense for a run with one fit, so a second fit asking is an error.
        """
        choice = self.cfg.get("ckpt_path")
        last = self.checkpoint_dir(fit_name) / "last.ckpt"
        if choice == RESUME_NEVER:
            return None
        if choice is RESUME_AUTO:
            return str(last) if last.is_file() else None
        if choice == RESUME_LAST:
            if not last.is_file():
                raise UserError(f"ckpt_path=last: no checkpoint at {last}; run in that dir first (hydra.run.dir=...) or drop ckpt_path")
            return str(last)
        path = Path(choice)
        if path.is_dir():
            in_dir = path / "checkpoints" / fit_name / "last.ckpt"
            return str(in_dir) if in_dir.is_file() else None
        if not path.is_file():
            raise UserError(f"ckpt_path={choice}: no such checkpoint file or run dir")
        self._fits_resumed_from_file.add(fit_name)
        if len(self._fits_resumed_from_file) > 1:
            raise UserError(f"ckpt_path={choice} is one checkpoint, but this run has several fits "
                            f"({', '.join(sorted(self._fits_resumed_from_file))}); pass the run dir instead")
        return str(path)

    # -- result files --------------------------------------------------------------------------
    def write_resolved_config(self) -> None:
        """config_resolved.yaml beside Hydra's .hydra/config.yaml (which keeps interpolations)."""
        text = OmegaConf.to_yaml(OmegaConf.create(self.resolved_config))
        atomic_write_text(self.output_dir / "config_resolved.yaml", text)

    def write_records(self, records: list[dict[str, Any]]) -> None:
        lines = "".join(json.dumps(record, allow_nan=True) + "\n" for record in records)
        atomic_write_text(self.output_dir / "records.jsonl", lines)
