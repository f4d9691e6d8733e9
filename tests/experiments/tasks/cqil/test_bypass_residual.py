"""`cqil.bypass_residual` reaches every CQIL setting the task builds: the grid, the (S, E) rule, the
latency table (in-process modes and the ranks' jobs), recovery and its saved layout, distributed
scoring and the latency bench. Run with `cqil.bypass_residual=false` (the default is true, so a place
that builds its spec without the key shows up as a True)."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

import experiments.tasks.cqil.task as task
import models.cqil.distributed
import models.cqil.recovery as recovery
from common.errors import UserError
from experiments.core.run_context import RunContext
from models.cqil.plugin import CQILSpec, apply_cqil
from tests.conftest import REPO
from tests.experiments.tasks.cqil.tiny_task import inline_spawn, tiny_task_config


@pytest.fixture
def applied(monkeypatch) -> list[tuple[CQILSpec, str]]:
    """(spec, mode) of every apply_cqil the task and recovery make; distributed mode runs as sequential,
    there being one process."""
    calls: list[tuple[CQILSpec, str]] = []

    def record(model, spec: CQILSpec, mode: str = "sequential") -> CQILSpec:
        calls.append((spec, mode))
        return apply_cqil(model, spec, mode="sequential" if mode == "distributed" else mode)

    monkeypatch.setattr(task, "apply_cqil", record)
    monkeypatch.setattr(recovery, "apply_cqil", record)
    monkeypatch.setattr(models.cqil.distributed, "spawn", inline_spawn)
    return calls


def test_every_stage_of_a_run_applies_the_configured_bypass_residual(make_config, tmp_path, applied) -> None:
    cfg = tiny_task_config(make_config, tmp_path, "cqil.recovery.enabled=true", "cqil.recovery.removal=false")
    result = task.run(cfg, RunContext(cfg, tmp_path / "run"))
    metrics = result.metrics
    # every stage ran: grid, rule, latency (in-process and rank modes), recovery
    assert "cqil_p2_s0_e4_d1/text_ppl" in metrics and metrics["rule_p2/evaluations"] >= 1
    assert {"distributed_shm_latency_ratio", "fused_latency_ratio"} <= {k.split("/")[1] for k in metrics}
    assert "cqil_p2_s0_e4_d1_lora/text_ppl" in metrics
    modes = {mode for _, mode in applied}
    assert modes == {"sequential", "fused", "distributed"}
    wrong = [(spec.name, mode) for spec, mode in applied if spec.bypass_residual is not False]
    assert not wrong, f"specs built without cqil.bypass_residual: {wrong}"
    [record] = [r for r in result.records if r["setting"] == "cqil_p2_s0_e4_d1_lora"]
    assert record["saved"] == "artifacts/recovered/cqil_p2_s0_e4_d1_lora"  # cqil.recovery.save=adapters
    assert (tmp_path / "run" / record["saved"] / "adapter_config.json").is_file()
    layout = json.loads((tmp_path / "run" / record["saved"] / "cqil_layout.json").read_text())
    assert layout["cqil"]["bypass_residual"] is False  # the saved layout reapplies the same semantics


def test_distributed_scoring_applies_the_configured_bypass_residual(make_config, tmp_path, applied) -> None:
    cfg = tiny_task_config(make_config, tmp_path, "cqil.mode=distributed")
    container = task.OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra")
    out = task.distributed_scores(container, 0, 1)
    assert "cqil_p2_s0_e4_d1/sequential_text_ppl" in out["metrics"]
    assert {mode for _, mode in applied} == {"sequential", "distributed"}
    assert all(spec.bypass_residual is False for spec, _ in applied)


def test_the_bench_times_the_bypass_residual_it_is_given() -> None:
    spec_file = importlib.util.spec_from_file_location("cqil_latency_bench", REPO / "bench" / "cqil_latency.py")
    bench = importlib.util.module_from_spec(spec_file)
    spec_file.loader.exec_module(bench)
    argv = sys.argv
    try:
        sys.argv = ["cqil_latency.py", "--d", "1", "--no-bypass-residual"]
        assert bench.bench_spec(bench.parse_args()) == CQILSpec(4, 28, 2, 1, bypass_residual=False)
        sys.argv = ["cqil_latency.py"]
        assert bench.bench_spec(bench.parse_args()).bypass_residual is True
    finally:
        sys.argv = argv


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("cqil.bypass_residual=maybe", "cqil.bypass_residual='maybe': must be true or false"),
        ("cqil.recovery.save=everything", "cqil.recovery.save='everything': choose one of adapters, merged, none"),
    ],
)
def test_bad_values_are_refused_before_the_model_loads(make_config, override, message) -> None:
    cfg = make_config("task=cqil", "cqil.recovery.enabled=true", override, "model.loader.gguf_file=/nope.gguf")
    with pytest.raises(UserError) as error:
        task.check_config(cfg)
    assert str(error.value) == message
