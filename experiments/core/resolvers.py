"""OmegaConf resolvers used by the YAML in conf/ (registered once, on import)."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

WANDB_HOST = "api.wandb.ai"


def wandb_online_problem(timeout_s: float = 3.0) -> str | None:
    """Why an online W&B run would fail or hang (no API key: W&B would prompt in a terminal; no network:
    it would retry for minutes), or None when it can go online."""
    import netrc
    import socket

    has_key = bool(os.environ.get("WANDB_API_KEY"))
    if not has_key:
        try:
            has_key = netrc.netrc().authenticators(WANDB_HOST) is not None
        except (OSError, netrc.NetrcParseError):
            has_key = False
    if not has_key:
        return "no W&B API key (set WANDB_API_KEY or run `wandb login`)"
    host = os.environ.get("WANDB_BASE_URL", f"https://{WANDB_HOST}").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host.split(":")[0], int(host.split(":")[1]) if ":" in host else 443), timeout=timeout_s).close()
    except OSError as exc:
        return f"cannot reach {host} ({exc.__class__.__name__})"
    return None


_online_checks: dict[tuple, str | None] = {}


def _cached_online_problem() -> str | None:
    """One check (and one warning) per process and environment, however often the config is resolved."""
    key = (os.environ.get("WANDB_API_KEY"), os.environ.get("WANDB_BASE_URL"), os.environ.get("HOME"))
    if key not in _online_checks:
        _online_checks[key] = wandb_online_problem()
        if _online_checks[key]:
            import logging

            logging.getLogger(__name__).warning(
                "W&B: %s; logging offline instead (sync later with `wandb sync`)", _online_checks[key]
            )
    return _online_checks[key]


def wandb_offline() -> bool:
    """W&B stays offline unless the user opts in with WANDB_MODE=online (runs can be synced later); an
    online request that cannot work falls back to offline with one warning instead of a prompt or a hang."""
    if os.environ.get("WANDB_MODE", "offline").lower() != "online":
        return True
    return _cached_online_problem() is not None


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


def run_id() -> str:
    """The default run / sweep dir name: the start time to the microsecond (two runs started in the same
    second get different dirs), or an id every rank of one launch shares, so that `torchrun` / `srun` ranks
    all use rank 0's dir: FIVEFOLD_RUN_ID, else torchrun's rendezvous id, else the SLURM job and step."""
    env = os.environ
    if env.get("FIVEFOLD_RUN_ID"):
        return env["FIVEFOLD_RUN_ID"]
    if int(env.get("WORLD_SIZE", "1") or 1) > 1 and env.get("TORCHELASTIC_RUN_ID", "none") not in ("", "none"):
        return f"torchrun_{env['TORCHELASTIC_RUN_ID']}"
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and env.get("SLURM_JOB_ID") and env.get("SLURM_STEP_ID"):
        return f"slurm_{env['SLURM_JOB_ID']}_{env['SLURM_STEP_ID']}"
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")


def device_count(devices: object) -> int | None:
    """How many devices a Lightning `devices` value names: 2 -> 2, [0, 1] or "0,1" -> 2, "3" -> 3;
    None for "auto" / -1 (the node decides, which a job request cannot know in advance)."""
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        return devices if devices > 0 else None
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:
            return len([d for d in text.split(",") if d.strip()])
        return int(text) if text.isdigit() and int(text) > 0 else None
    try:
        return len(list(devices))  # a list of device indices (ListConfig included)
    except TypeError:
        return None


GPU_ACCELERATORS = ("gpu", "cuda")


def slurm_gpus(accelerator: object, devices: object) -> int | None:
    """GPUs per node to ask SLURM for: the trainer's device count when it trains on GPUs, else none, so a
    CPU trainer submits to CPU-only partitions without a gres request (which they refuse)."""
    if str(accelerator).lower() not in GPU_ACCELERATORS:
        return None
    count = device_count(devices)
    if count is None:
        import logging

        logging.getLogger(__name__).warning(
            "trainer.devices=%s does not say how many GPUs to request; set "
            "trainer.devices to a number or hydra.launcher.gpus_per_node",
            devices,
        )
    return count


def slurm_tasks(devices: object) -> int:
    """srun tasks per node: one per device, so Lightning's SLURM environment wires one rank per task
    (it turns ddp_spawn into ddp under SLURM, so this holds for every strategy); 1 when not countable."""
    return device_count(devices) or 1


def register() -> None:
    for name, fn in {
        "wandb_offline": wandb_offline,
        "sweep_group": sweep_group,
        "slurm_gpus": slurm_gpus,
        "slurm_tasks": slurm_tasks,
    }.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=False)
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", run_id, use_cache=True)  # one value per process, like ${now:}


register()
