"""RunContext: what a task may touch of its run dir (loggers, checkpoints, state, artifacts, plots).

Layout of a run dir (Hydra's output dir)::

    .hydra/config.yaml     the composed config, interpolations kept (written by Hydra)
    config_resolved.yaml   the same with every interpolation resolved
    run.log                the job's log
    checkpoints/<fit>/     Lightning checkpoints or a loop's saved state, one folder per fit (last.ckpt = resume point)
    artifacts/             per-item outputs (per-video scores, crops, heat maps, converted checkpoints)
    plots/*.png            figures (also logged to W&B / TensorBoard)
    records.jsonl          one line per replicate (factors, seed, metrics)
    metrics.json           final flat metrics, written last and atomically
    results.md             the human-readable results table

Only global rank 0 writes; other ranks (DDP, torchrun, srun tasks) run the same code and skip writes.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from common.errors import UserError
from common.files import atomic_write_bytes, atomic_write_text, atomic_write_with
from common.values import plain_value
from experiments.core.run_dir import ResumeFrom

log = logging.getLogger(__name__)

_RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK")  # torchrun, srun tasks, Lightning's own children


def global_rank() -> int:
    """This process's rank: torch.distributed's when it is running, else Lightning's, else the launcher's
    environment (torchrun's RANK, srun's SLURM_PROCID), so a task without a Trainer knows it too."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    rank_module = sys.modules.get("lightning.fabric.utilities.rank_zero")
    if rank_module is not None and getattr(rank_module.rank_zero_only, "rank", None) is not None:
        return int(rank_module.rank_zero_only.rank)
    for name in _RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def is_global_zero() -> bool:
    return global_rank() == 0


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's config with every interpolation resolved (Hydra's own node left out)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    return container


class RunContext:
    """Owns the loggers, checkpoints, saved state, artifacts and figures of one run dir."""

    def __init__(self, cfg: DictConfig, output_dir: Path) -> None:
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.resolved_config = resolved_config(cfg)
        self._loggers: list[Any] | None = None
        self._fits_resumed_from_file: set[str] = set()
        self._next_step: dict[str, int] = {}  # per series (fit name): the logger step the next fit starts at

    # -- work bounds ---------------------------------------------------------------------------
    def limit(self, count: int) -> int:
        """`count` bounded by `task.limit` (debug=fast sets it): how many seeds, items, videos, batches."""
        bound = self.cfg.task.get("limit")
        return int(count) if bound is None else min(int(count), int(bound))

    # -- loggers -------------------------------------------------------------------------------
    @property
    def loggers(self) -> list[Any]:
        """Experiment loggers from `cfg.logger`, created on first use with the resolved config logged."""
        if self._loggers is None:
            from hydra.utils import instantiate

            nodes = self.cfg.get("logger") or {}
            self._loggers = [instantiate(node) for node in nodes.values() if node is not None]  # Lightning loggers are rank-aware
            provenance = {k: v for k, v in getattr(self, "provenance", {}).items() if k != "git_diff"}
            for logger in self._loggers:
                logger.log_hyperparams({**self.resolved_config, "provenance": provenance})
        return self._loggers

    def loggers_for_fit(self, fit_name: str) -> list[Any]:
        """The loggers for one Lightning fit, with steps that continue where this fit name's last fit
        stopped: a model trained in several consecutive fits (one per co-training epoch) draws one curve."""
        from experiments.core.step_logger import ContinuingStepLogger

        return [ContinuingStepLogger(logger, self, fit_name) for logger in self.loggers]

    def next_step(self, series: str) -> int:
        return self._next_step.get(series, 0)

    def advance_step(self, series: str, step: int) -> None:
        """Record that `series` logged at absolute `step`; its next fit starts after it."""
        self._next_step[series] = max(self._next_step.get(series, 0), int(step) + 1)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, series: str = "loop") -> None:
        """Log from a loop without a Trainer; `step=None` continues the series' own counter."""
        step = self.next_step(series) if step is None else int(step)
        values = {key: plain_value(value, key) for key, value in metrics.items()}
        for logger in self.loggers:
            logger.log_metrics(values, step=step)
        self.advance_step(series, step)

    def log_final_metrics(self, metrics: Mapping[str, float]) -> None:
        """Final metrics into the W&B run summary and as a last TensorBoard step. (The CSV logger keeps
        the per-epoch history only: its final numbers are metrics.json.)"""
        from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

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
            return path  # other ranks run the same code; one writer is enough
        atomic_write_with(path, lambda tmp: figure.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
        from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

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
        if "wandb" in sys.modules and any(type(logger).__name__ == "WandbLogger" for logger in self._loggers or []):
            import wandb

            wandb.finish(exit_code=0 if status == "success" else 1)

    # -- artifacts -----------------------------------------------------------------------------
    def artifact_path(self, name: str) -> Path:
        """Where artifact `name` (a relative path such as "scores.csv" or "crops/bikes_fixed.mp4") lives."""
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"artifact name {name!r} must be a relative path inside the run dir")
        return self.output_dir / "artifacts" / relative

    def write_artifact(self, name: str, content: str | bytes | Callable[[Path], Any]) -> Path:
        """Write artifacts/<name> atomically on rank 0: text, bytes, or `content(tmp_path)` for writers that
        need a path (video writers, torch.save, model.save_pretrained into a folder is not supported: write
        a file). After a failure nothing half-written is left under the name."""
        path = self.artifact_path(name)
        if not is_global_zero():
            return path
        if isinstance(content, str):
            return atomic_write_text(path, content)
        if isinstance(content, bytes):
            return atomic_write_bytes(path, content)
        return atomic_write_with(path, content)

    # -- checkpoints and loop state ------------------------------------------------------------
    def checkpoint_dir(self, fit_name: str) -> Path:
        return self.output_dir / "checkpoints" / fit_name

    def resume_path(self, fit_name: str) -> str | None:
        """Checkpoint to resume `fit_name` from, per `cfg.ckpt_path` (see conf/config.yaml).

        A run dir as `ckpt_path` resumes every fit from its own `checkpoints/<fit>/last.ckpt` there;
        a single file only makes sense for a run with one fit, so a second fit asking is an error.
        """
        choice = self.cfg.get("ckpt_path")
        resume = ResumeFrom.parse(choice)
        last = self.checkpoint_dir(fit_name) / "last.ckpt"
        if resume.kind == "never":
            return None
        if resume.kind == "auto":
            return str(last) if last.is_file() else None
        if resume.kind == "last":
            if not last.is_file():
                raise UserError(
                    f"ckpt_path=last: no checkpoint at {last}; run in that dir first (hydra.run.dir=...) or drop ckpt_path"
                )
            return str(last)
        assert resume.path is not None
        if resume.kind == "run_dir":
            in_dir = resume.path / "checkpoints" / fit_name / "last.ckpt"
            return str(in_dir) if in_dir.is_file() else None
        if not resume.path.is_file():
            raise UserError(f"ckpt_path={choice}: no such checkpoint file or run dir")
        self._fits_resumed_from_file.add(fit_name)
        if len(self._fits_resumed_from_file) > 1:
            raise UserError(
                f"ckpt_path={choice} is one checkpoint, but this run has several fits "
                f"({', '.join(sorted(self._fits_resumed_from_file))}); pass the run dir instead"
            )
        return str(resume.path)

    def save_state(self, name: str, state: Mapping[str, Any]) -> Path:
        """Save a loop's state (tensors, numbers, RNG states) as checkpoints/<name>/last.ckpt, atomically on
        rank 0: the resume point of a task that does not run a Lightning Trainer."""
        path = self.checkpoint_dir(name) / "last.ckpt"
        if is_global_zero():
            import torch

            atomic_write_with(path, lambda tmp: torch.save(dict(state), tmp))
        return path

    def load_state(self, name: str) -> dict[str, Any] | None:
        """The state saved under `name`, chosen by the same `ckpt_path` rules as Lightning fits; None = start fresh."""
        path = self.resume_path(name)
        if path is None:
            return None
        import torch

        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise UserError(
                f"cannot read saved state {path} ({exc.__class__.__name__}); delete it or pass ckpt_path=none"
            ) from None
        if not isinstance(state, dict):
            raise UserError(f"saved state {path} is not a dict of state; delete it or pass ckpt_path=none")
        log.info("%s: resuming from %s", name, path)
        return state

    # -- result files --------------------------------------------------------------------------
    def write_resolved_config(self) -> None:
        """config_resolved.yaml beside Hydra's .hydra/config.yaml (which keeps interpolations), and
        provenance.json: the commit, diff, versions and host that produced this run."""
        from experiments.core.provenance import collect, drift_warnings

        text = OmegaConf.to_yaml(OmegaConf.create(self.resolved_config))
        atomic_write_text(self.output_dir / "config_resolved.yaml", text)
        self.provenance = collect()
        for line in drift_warnings(self.provenance):
            log.warning(line)
        atomic_write_text(self.output_dir / "provenance.json", json.dumps(self.provenance, indent=2) + "\n")

    def write_records(self, records: list[dict[str, Any]]) -> None:
        lines = "".join(json.dumps(record, allow_nan=True) + "\n" for record in records)
        atomic_write_text(self.output_dir / "records.jsonl", lines)
