"""The task wrapper every run goes through: validate, seed, run the task, write results, clean up.

A task is a function ``run(cfg, ctx) -> TaskResult`` named by ``cfg.task.runner``; nothing here knows
which task it runs, so a Lightning training task, a co-training loop, an inference plugin and a video
pipeline all go through the same path.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from hydra.errors import InstantiationException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from common.errors import UserError, exit_with_error
from common.files import atomic_write_text
from common.values import json_number
from experiments.core.run_context import RunContext, is_global_zero
from experiments.core.run_dir import RunDirLock, check_resume_config, remove_stale_results
from experiments.core.task import TaskResult
from experiments.core.validation.config_check import check_accelerator, check_key_ranges, check_targets, read_signature

log = logging.getLogger(__name__)
# TaskResult.exit_status of each run completed in this process (each job of a sweep with Hydra's default
# launcher): run.py exits with the largest once every job is done.
EXIT_STATUSES: list[int] = []


def final_exit_status() -> int:
    """The status run.py ends with: the largest exit_status of the runs in this process, 0 without any."""
    return max(EXIT_STATUSES, default=0)


def validate(cfg: DictConfig) -> Callable[[DictConfig, RunContext], TaskResult]:
    """Fail early, in one line, on a bad seed, task runner or `_target_` node."""
    if not isinstance(cfg.get("seed"), int) or isinstance(cfg.seed, bool):
        raise UserError(f"seed={cfg.get('seed')!r} must be an integer")
    check_key_ranges(cfg)  # before any import of the task: a plain bad value answers without loading torch
    check_accelerator(cfg)
    check_targets(cfg, signature_of=read_signature)  # the same, for `_target_` nodes whose source can be read
    runner_path = cfg.task.get("runner")
    try:
        from hydra.utils import get_method

        runner = get_method(runner_path)
    except Exception:
        raise UserError(
            f"task.runner={runner_path!r} is not an importable function; fix conf/task/{cfg.task.get('name')}.yaml"
        ) from None
    check_targets(cfg)
    keep_wandb_offline_when_it_cannot_go_online(cfg)
    warn_unread_additions()
    return runner


def keep_wandb_offline_when_it_cannot_go_online(cfg: DictConfig) -> None:
    """`logger.wandb.offline=false` set by hand gets the same check as WANDB_MODE=online: no prompt, no hang."""
    from omegaconf import open_dict

    from experiments.core.resolvers import _cached_online_problem

    for node in (cfg.get("logger") or {}).values():
        if node is not None and str(node.get("_target_", "")).endswith("WandbLogger") and node.get("offline") is False:
            if _cached_online_problem() is not None:
                with open_dict(node):
                    node.offline = True


def warn_unread_additions() -> None:
    """`+key=value` adds a key no YAML declares; unless it lands in a checked `_target_` node, nothing may read it."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except (ImportError, ValueError):
        return
    for override in overrides:
        if override.startswith("+") and not override.startswith("++") and not override.startswith("+hydra"):
            log.warning("%s adds a key that no config file declares; check its spelling (nothing may read it)", override)


def prepare_output_dir(output_dir: Path) -> RunDirLock | None:
    """Make sure the run dir is writable, take its lock (rank 0) and remove an earlier attempt's results,
    before anything can fail: a dir never shows old results beside a new config."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".write_test_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"output dir {output_dir} is not writable ({exc.strerror}); set hydra.run.dir / paths.log_dir to a writable folder"
        ) from None
    if not is_global_zero():
        return None  # other ranks of one launch share rank 0's dir and never write results
    lock = RunDirLock(output_dir)
    lock.acquire()
    remove_stale_results(output_dir)
    return lock


def write_results(ctx: RunContext, result: TaskResult) -> None:
    """records.jsonl, results.md, then metrics.json last: its presence means the run completed."""
    metrics = {key: json_number(value) for key, value in result.metrics.items()}
    records = [{k: json_number(v) for k, v in record.items()} for record in result.records]
    if records:
        ctx.write_records(records)
    atomic_write_text(ctx.output_dir / "results.md", result.table + "\n")
    atomic_write_text(ctx.output_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def objective(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The value a sweeper (Optuna) optimises: metrics[cfg.optimized_metric]."""
    key = cfg.get("optimized_metric")
    if key is None:
        return None
    if key not in metrics:
        raise UserError(f"optimized_metric={key!r} is not a metric of this run (known: {', '.join(sorted(metrics))})")
    return metrics[key]


def run_task(cfg: DictConfig, output_dir: Path) -> float | None:
    """Run the configured task in `output_dir`; user errors exit with status 2 and one line on stderr."""
    lock = None
    try:
        lock = prepare_output_dir(output_dir)
        runner = validate(cfg)
        ctx = RunContext(cfg, output_dir)
        if is_global_zero():
            check_resume_config(output_dir, ctx.resolved_config, cfg.get("ckpt_path"), bool(cfg.get("resume_check", True)))
            ctx.write_resolved_config()
        from lightning import seed_everything

        from experiments.core.quiet import one_console_handler

        one_console_handler()
        seed_everything(cfg.seed, workers=True, verbose=False)
        status = "failed"
        try:
            result = runner(cfg, ctx)
            if is_global_zero():
                ctx.log_final_metrics(result.metrics)
                write_results(ctx, result)
                log.info("results in %s", output_dir)
            status = "success"
        finally:
            ctx.close(status)
        if is_global_zero():
            print(result.table)  # last, after the loggers' own output: the table is what a person reads
            EXIT_STATUSES.append(result.exit_status)
        return objective(cfg, result.metrics)
    except UserError as exc:
        exit_with_error(str(exc))
    except InstantiationException as exc:  # "Error in call to target 'X':" + the cause + "full_key: ..."
        if isinstance(exc.__cause__, UserError):
            exit_with_error(str(exc.__cause__))  # our own message already names the key and the fix
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        exit_with_error(" ".join(lines[:3]))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or ""
        message = str(exc).splitlines()[0]
        exit_with_error(f"config {key}: {message}".replace("config : ", "config: "))
    finally:
        if lock is not None:
            lock.release()
