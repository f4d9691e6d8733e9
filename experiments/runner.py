"""The task wrapper every run goes through: validate, seed, run the task, write results, clean up.

A task is a function ``run(cfg, ctx) -> TaskResult`` named by ``cfg.task.runner``; nothing here knows
which task it runs, so a Lightning training task, a co-training loop, an inference plugin and a video
pipeline all go through the same path.
"""
from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hydra.errors import InstantiationException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from experiments.config_check import check_targets
from experiments.errors import UserError
from experiments.run_context import RunContext, is_global_zero, atomic_write_text

log = logging.getLogger(__name__)

CHECKED_GROUPS = ("trainer", "model", "dataset", "logger", "callbacks")


@dataclass
class TaskResult:
    """What a task returns: flat metrics, a Markdown results table, and one record per trained run."""

    metrics: dict[str, float]
    table: str = ""
    records: list[dict[str, Any]] = field(default_factory=list)


def _json_number(value: Any) -> Any:
    """NaN/inf are not JSON: store them as null (aggregation reads null as missing)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def validate(cfg: DictConfig) -> Callable[[DictConfig, RunContext], TaskResult]:
    """Fail early, in one line, on a bad seed, task runner or `_target_` node."""
    if not isinstance(cfg.get("seed"), int) or isinstance(cfg.seed, bool):
        raise UserError(f"seed={cfg.get('seed')!r} must be an integer")
    runner_path = cfg.task.get("runner")
    try:
        from hydra.utils import get_method

        runner = get_method(runner_path)
    except Exception:
        raise UserError(f"task.runner={runner_path!r} is not an importable function; fix conf/task/{cfg.task.get('name')}.yaml") from None
    check_targets(cfg, CHECKED_GROUPS)
    return runner


def prepare_output_dir(output_dir: Path) -> None:
    """Make sure the run dir is writable and holds no stale metrics.json from an earlier attempt."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"output dir {output_dir} is not writable ({exc.strerror}); set hydra.run.dir / paths.log_dir to a writable folder") from None
    if is_global_zero():
        (output_dir / "metrics.json").unlink(missing_ok=True)


def write_results(ctx: RunContext, result: TaskResult) -> None:
    """records.jsonl, results.md, then metrics.json last: its presence means the run completed."""
    metrics = {key: _json_number(float(value)) for key, value in result.metrics.items()}
    records = [{k: _json_number(v) for k, v in record.items()} for record in result.records]
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
    try:
        runner = validate(cfg)
        prepare_output_dir(output_dir)
        from lightning import seed_everything

        seed_everything(cfg.seed, workers=True, verbose=False)
        ctx = RunContext(cfg, output_dir)
        if is_global_zero():
            ctx.write_resolved_config()
        status = "failed"
        try:
            result = runner(cfg, ctx)
            if is_global_zero():
                ctx.log_final_metrics(result.metrics)
                write_results(ctx, result)
                print(result.table)
                log.info("results in %s", output_dir)
            status = "success"
        finally:
            ctx.close(status)
        return objective(cfg, result.metrics)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except InstantiationException as exc:  # "Error in call to target 'X':" + the cause + "full_key: ..."
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        print(f"error: {' '.join(lines[:3])}", file=sys.stderr)
        raise SystemExit(2) from None
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or ""
        message = str(exc).splitlines()[0]
        print(f"error: config {key}: {message}".replace("config : ", "config: "), file=sys.stderr)
        raise SystemExit(2) from None
