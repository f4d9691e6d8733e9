"""The latency table's two baselines: each mode against the original timed like it (one thread; per
rank for the distributed modes) and against the original on as many cores as the mode uses in all
(`<mode>_latency_ratio_same_cores`). Timings come from a fake clock, so the ratios are exact."""

from __future__ import annotations

import json

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

import experiments.tasks.cqil.task as task
import models.cqil.distributed
import models.cqil.evaluate as evaluate
from common.errors import UserError
from experiments.core.run_context import RunContext
from models.cqil.plugin import CQILSpec, apply_cqil, decoder_of
from tests.experiments.tasks.cqil.tiny_task import inline_spawn, tiny_lm, tiny_task_config

LAT = {"threads": 1, "world_size": 2}


def test_cqil_uses_world_size_threads_in_distributed_modes_and_threads_otherwise() -> None:
    assert [task.cqil_threads(m, LAT) for m in task.LATENCY_MODES] == [1, 1, 2, 2]
    assert [task.same_cores_key(m, LAT) for m in task.LATENCY_MODES] == [
        "original",  # sequential / fused run on `threads`: the one original is also the same-cores one
        "original",
        "original@2_threads",
        "original@2_threads",
    ]
    assert task.same_cores_key("fused", {"threads": 2, "world_size": 2}) == "original"
    assert task.same_cores_key("distributed", {"threads": 2, "world_size": 4}) == "original@4_threads"


@pytest.fixture
def fake_clock(monkeypatch) -> None:
    """Every timed run takes 1 s per token on the original layers and 0.6 s on CQIL's, divided by the
    intra-op threads it runs on; prefill 10x that. Distributed mode runs as sequential (one process)."""
    model_layers = LlamaDecoderLayer

    def timed(model, prompt, decode_steps, repeats, warmup):
        original = all(isinstance(layer, model_layers) for layer in decoder_of(model).layers)
        decode = (1.0 if original else 0.6) / torch.get_num_threads()
        return {"prefill_s": 10 * decode, "decode_s": decode}

    def sequential_for_distributed(model, spec, mode="sequential"):
        return apply_cqil(model, spec, mode="sequential" if mode == "distributed" else mode)

    monkeypatch.setattr(evaluate, "time_prefill_decode", timed)
    monkeypatch.setattr(task, "apply_cqil", sequential_for_distributed)
    monkeypatch.setattr(models.cqil.distributed, "spawn", inline_spawn)


def test_each_mode_gets_the_ratio_to_the_original_on_the_same_cores(make_config, tmp_path, fake_clock) -> None:
    cfg = tiny_task_config(make_config, tmp_path)
    ctx, results = RunContext(cfg, tmp_path / "run"), task.Results()
    task.measure_latency(cfg, ctx, tiny_lm(), 4, results)
    got = {k.split("/", 1)[1]: v for k, v in results.metrics.items()}
    for mode in ("sequential", "fused"):  # 1 thread, against the 1-thread original either way
        assert got[f"{mode}_latency_ratio"] == pytest.approx(0.6)
        assert got[f"{mode}_latency_ratio_same_cores"] == pytest.approx(0.6)
        assert got[f"{mode}_prefill_latency_ratio_same_cores"] == pytest.approx(0.6)
    for mode in ("distributed", "distributed_shm"):  # rank 0 on 1 thread: 0.6 s vs 1 s; vs 2 threads: 0.6 vs 0.5
        assert got[f"{mode}_latency_ratio"] == pytest.approx(0.6)
        assert got[f"{mode}_latency_ratio_same_cores"] == pytest.approx(1.2)
        assert got[f"{mode}_prefill_latency_ratio_same_cores"] == pytest.approx(1.2)
    table = json.loads((tmp_path / "run/artifacts/latency.json").read_text())
    assert table["original"]["threads"] == 1 and table["original@2_threads"]["threads"] == 2
    assert table["cqil_p2_s0_e4_d1/distributed"]["ranks"] == 2
    assert {entry["device"] for entry in table.values()} == {"cpu"}


def test_gpu_ranks_get_no_same_cores_ratio() -> None:
    """On GPUs the fair comparison is tensor parallelism, which is not timed: only the one-GPU ratio."""
    spec = CQILSpec(0, 4, 2)
    table = {
        "original": {"prefill_s": 1.0, "decode_s": 1.0, "device": "cpu"},
        "original@distributed": {"prefill_s": 1.0, "decode_s": 1.0, "device": "cuda"},
        "original@2_threads": {"prefill_s": 1.0, "decode_s": 1.0, "device": "cpu"},
        f"{spec.name}/distributed": {"prefill_s": 0.5, "decode_s": 0.5, "device": "cuda"},
        f"{spec.name}/fused": {"prefill_s": 0.8, "decode_s": 0.8, "device": "cpu"},
    }
    values = task.latency_ratios(table, spec, ["fused", "distributed"], 4, LAT)
    assert values["distributed_latency_ratio"] == 0.5 and "distributed_latency_ratio_same_cores" not in values
    assert values["fused_latency_ratio_same_cores"] == 0.8


def test_ranks_on_gpus_skip_the_cpu_same_cores_original(make_config, tmp_path, fake_clock, monkeypatch) -> None:
    monkeypatch.setattr(task, "ranks_on_gpus", lambda world: True)
    cfg = tiny_task_config(make_config, tmp_path, "cqil.latency.modes=[fused,distributed]")
    table = task.latency_table(cfg, tiny_lm(), task.parse_settings(cfg.cqil.latency.settings, False), ["fused", "distributed"])
    assert "original@2_threads" not in table and "original" in table
    table = task.latency_table(cfg, tiny_lm(), task.parse_settings(cfg.cqil.latency.settings, False), ["distributed_shm"])
    assert "original@2_threads" in table  # shared-memory ranks stay on CPU: their same-cores original is timed


def test_the_results_table_shows_both_ratios_per_mode() -> None:
    metrics = {
        "cqil_p2_s4_e28/ideal_latency_ratio": 0.6,
        "cqil_p2_s4_e28/fused_latency_ratio": 0.9,
        "cqil_p2_s4_e28/fused_latency_ratio_same_cores": 0.9,
        "cqil_p2_s4_e28/distributed_shm_latency_ratio": 0.7,
        "cqil_p2_s4_e28/distributed_shm_latency_ratio_same_cores": 1.1,
        "removed_2/ideal_latency_ratio": 0.9,
    }
    rows = task.latency_rows(metrics)
    assert rows == [
        ["cqil_p2_s4_e28", "fused", "0.600", "0.900", "0.900", "–", "–"],
        ["cqil_p2_s4_e28", "distributed_shm", "0.600", "0.700", "1.100", "–", "–"],
    ]
    assert len(task.LATENCY_HEADER) == len(rows[0])


def test_the_configured_timeout_reaches_every_spawned_job(make_config, tmp_path, fake_clock, monkeypatch) -> None:
    """`cqil.timeout_s` bounds how long a rank waits for a peer, in the latency stage and distributed scoring."""
    seen, backends = [], []

    def recording_spawn(job, world_size, threads=1, **kwargs):
        seen.append(kwargs.get("timeout_s"))
        backends.append(kwargs.get("backend"))
        return inline_spawn(job, world_size, threads)

    monkeypatch.setattr(models.cqil.distributed, "spawn", recording_spawn)
    cfg = tiny_task_config(make_config, tmp_path, "cqil.timeout_s=7")
    task.measure_latency(cfg, RunContext(cfg, tmp_path / "run"), tiny_lm(), 4, task.Results())
    assert seen == [7.0, 7.0]  # distributed over gloo and over shared memory
    assert backends == [None, "gloo"]  # shared memory carries CPU tensors: its ranks never take NCCL and GPUs
    monkeypatch.setattr(task, "distributed_scores", lambda container, rank, world: {})
    task.score_on_ranks(tiny_task_config(make_config, tmp_path, "cqil.mode=distributed", "cqil.timeout_s=3.5"))
    assert seen[-1] == 3.5


@pytest.mark.parametrize("value", ["0", "-1", "inf", "abc", "true"])
def test_a_timeout_that_is_not_positive_seconds_is_refused_naming_the_key(make_config, tmp_path, value) -> None:
    cfg = tiny_task_config(make_config, tmp_path, f"cqil.timeout_s={value}")
    with pytest.raises(UserError, match=r"^cqil\.timeout_s=.*: must be a number of seconds > 0$"):
        task.check_config(cfg)
