"""A throw-away task for runner tests: a seeded loop without a Lightning Trainer that saves its state
every step (`ctx.save_state`), writes an artifact, logs a curve, and can kill itself mid-run."""

from __future__ import annotations

import os
import signal

import numpy as np
from omegaconf import DictConfig

from experiments.core.run_context import RunContext
from experiments.core.task import TaskResult


def run(cfg: DictConfig, ctx: RunContext) -> TaskResult:
    steps = ctx.limit(cfg.task.steps)
    state = ctx.load_state("loop")
    if state is None:
        state = {"step": 0, "total": 0.0, "rng": np.random.default_rng(cfg.seed).bit_generator.state}
    rng = np.random.default_rng()
    rng.bit_generator.state = state["rng"]
    die_at = int(os.environ.get("TOY_DIE_AT", "-1"))
    resumed_at = state["step"]
    for step in range(state["step"], steps):
        if step == die_at and resumed_at == 0:
            os.kill(os.getpid(), signal.SIGKILL)  # as a pre-empted job dies: no cleanup, no finally
        state["total"] += float(rng.normal())
        state["step"] = step + 1
        state["rng"] = rng.bit_generator.state
        ctx.log_metrics({"total": state["total"]}, series="loop")
        ctx.save_state("loop", state)
    ctx.write_artifact("per_item.csv", "step,total\n" + f"{state['step']},{state['total']}\n")
    records = [{"condition": "loop", "seed": cfg.seed, "kind": cfg.task.kind, "total": np.float32(state["total"])}]
    return TaskResult(
        metrics={"loop/total": np.float32(state["total"]), "loop/resumed_at": resumed_at},
        table=f"total {state['total']:.6f}",
        records=records,
    )
