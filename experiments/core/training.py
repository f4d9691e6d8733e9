"""Building a Lightning Trainer for one fit of a task, from cfg.trainer and cfg.callbacks."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from experiments.core.run_context import RunContext


def build_trainer(cfg: DictConfig, ctx: RunContext, fit_name: str, **overrides: Any) -> tuple[Any, str | None]:
    """A Trainer whose checkpoints go to checkpoints/<fit_name>/, and the checkpoint to resume from.

    `overrides` replace cfg.trainer entries for this fit only (e.g. a source network's max_epochs).
    Logger steps continue across fits of the same name (see `RunContext.loggers_for_fit`).
    """
    callbacks = []
    for node in (cfg.get("callbacks") or {}).values():
        if node is None:
            continue
        extra = {"dirpath": str(ctx.checkpoint_dir(fit_name))} if "dirpath" in node else {}
        callbacks.append(instantiate(node, **extra))
    trainer = instantiate(cfg.trainer, logger=ctx.loggers_for_fit(fit_name) or False, callbacks=callbacks, **overrides)
    return trainer, ctx.resume_path(fit_name)
