"""OmegaConf resolvers used by the YAML in conf/ (registered once, on import)."""
from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf


def wandb_offline() -> bool:
    """W&B stays offline unless the user opts in with WANDB_MODE=online (runs can be synced later)."""
    return os.environ.get("WANDB_MODE", "offline").lower() != "online"


def sweep_group() -> str | None:
    """Name shared by every job of one multirun (its sweep dir), so W&B groups them; None for single runs."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
    except (ImportError, ValueError):
        return None
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    sweep_dir = Path(hydra_cfg.sweep.dir)
    return f"{sweep_dir.parent.parent.name}-{sweep_dir.name}"


def register() -> None:
    for name, fn in {"wandb_offline": wandb_offline, "sweep_group": sweep_group}.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=False)


register()
