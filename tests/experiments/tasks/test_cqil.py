"""The CQIL task end to end on the real stories260K checkpoint (llama2.c, converted) and real text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.core.runner import run_task
from models.cqil.shm import shared_memory_supported
from tests.conftest import experiments_of_task

SMALL = [
    "model=cqil_stories260k",
    "cqil=stories260k",
    "eval.window=64",
    "eval.max_tokens=128",
    "eval.greedy_tokens=4",
    "eval.greedy_prompts=1",
    "eval.prompt_tokens=8",
    "logger=none",
    "callbacks=none",
    "trainer.enable_progress_bar=false",
    "cqil.latency.repeats=1",
    "cqil.latency.decode_steps=2",
    "cqil.latency.prompt_tokens=8",
    "cqil.rule.max_evaluations=2",
]


def read(run_dir: Path) -> tuple[dict[str, float], list[dict]]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    return metrics, records


@pytest.mark.slow
def test_experiments_compose(make_config):
    assert set(experiments_of_task("cqil")) >= {"cqil_smollm2", "cqil_distributed"}
    cfg = make_config("experiment=cqil_smollm2", "hydra.mode=RUN")
    assert cfg.task.name == "cqil" and cfg.model.name == "cqil_smollm2" and cfg.dataset.name == "cqil_text"
    assert {"p": 2, "s": 24, "e": 28} in [dict(s) for s in cfg.cqil.settings]
    assert make_config("experiment=cqil_distributed", "hydra.mode=RUN").cqil.mode == "distributed"
    assert make_config("task=cqil").task.runner == "experiments.tasks.cqil.task.run"


def test_every_distributed_experiment_names_its_ranks(make_config, monkeypatch):
    """`mode=distributed` from plain run.py spawns `cqil.world_size` ranks of `cqil.threads_per_rank`
    threads: every config group that can be put in that mode names both."""
    import experiments.tasks.cqil.task as task
    import models.cqil.distributed

    seen = []
    monkeypatch.setattr(models.cqil.distributed, "init_from_env", lambda **kwargs: False)
    monkeypatch.setattr(
        models.cqil.distributed, "spawn", lambda job, world_size, threads, **kwargs: seen.append((world_size, threads))
    )
    task.score_on_ranks(make_config("experiment=cqil_distributed", "hydra.mode=RUN"))
    task.score_on_ranks(make_config("task=cqil", "cqil.mode=distributed"))
    task.score_on_ranks(make_config("task=cqil", "model=cqil_stories260k", "cqil=stories260k", "cqil.mode=distributed"))
    assert seen == [(2, 1), (2, 1), (2, 1)]


@pytest.mark.slow
def test_stories260k_run_writes_the_issue_keys(make_config, tmp_path, data_dir):
    cfg = make_config("task=cqil", *SMALL)
    run_task(cfg, tmp_path / "run")
    metrics, records = read(tmp_path / "run")
    for setting in (
        "original",
        "cqil_p2_s1_e3",
        "cqil_p2_s1_e5",
        "cqil_p2_s1_e3_d1",
        "cqil_p4_s1_e5",
        "removed_1",
        "removed_2",
        "removed_3",
    ):
        for metric in ("wikitext2_ppl", "tinystories_ppl", "greedy_agreement", "ideal_latency_ratio"):
            assert f"{setting}/{metric}" in metrics, f"{setting}/{metric}"
    assert metrics["original/greedy_agreement"] == 1.0
    assert metrics["cqil_p2_s1_e5/ideal_latency_ratio"] == pytest.approx(0.6)  # 4 layers, P=2: 2 of 5 saved
    assert metrics["removed_2/ideal_latency_ratio"] == pytest.approx(0.6)  # equal ideal latency
    assert metrics["cqil_p4_s1_e5/ideal_latency_ratio"] == pytest.approx(0.4)
    # grouping changes the model; TinyStories is its training distribution, WikiText is not
    assert metrics["cqil_p2_s1_e5/tinystories_ppl"] > metrics["original/tinystories_ppl"]
    assert metrics["original/tinystories_ppl"] < metrics["original/wikitext2_ppl"]
    for mode in ("sequential", "fused"):
        assert metrics[f"cqil_p2_s1_e5/{mode}_latency_ratio"] > 0
    assert "rule_p2/found" in metrics
    kinds = {r["kind"] for r in records}
    assert kinds == {"original", "cqil", "removed", "latency"}
    assert (tmp_path / "run" / "plots" / "layer_similarity.png").stat().st_size > 0
    assert (tmp_path / "run" / "artifacts" / "layer_similarity.csv").read_text().count("\n") == 6
    assert "| cqil_p2_s1_e5 |" in (tmp_path / "run" / "results.md").read_text()


def test_bad_settings_exit_with_one_line(run_cli, make_config, tmp_path, capsys):
    out = run_cli("task=cqil", *SMALL, "cqil.latency.enabled=false", "cqil.settings=[{p: 2, s: 1, e: 7}]")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == "error: cqil end=7 exceeds the model's 5 layers"
    cfg = make_config("task=cqil", *SMALL, "model.loader.checkpoint=/nope/x.bin")
    with pytest.raises(SystemExit) as exit_info:
        run_task(cfg, tmp_path / "missing")
    assert exit_info.value.code == 2
    assert "missing data file /nope/x.bin" in capsys.readouterr().err
    cfg = make_config("task=cqil", *SMALL, "model.loader.checkpoint=/nope/x.bin", "cqil.latency.modes=[sequential,warp]")
    with pytest.raises(SystemExit):
        run_task(cfg, tmp_path / "bad_mode")  # the mode is refused before the (missing) checkpoint is read
    assert "cqil.latency.modes: ['warp'] not among" in capsys.readouterr().err


@pytest.mark.slow
def test_recovery_and_distributed_on_stories260k(make_config, tmp_path, data_dir):
    cfg = make_config(
        "task=cqil",
        *SMALL,
        "cqil.latency.enabled=false",
        "cqil.rule.enabled=false",
        "cqil.removal=false",
        "cqil.recovery.enabled=true",
        "cqil.recovery.steps=3",
        "cqil.recovery.window=32",
        "cqil.recovery.train_tokens=256",
        "cqil.settings=[{p: 2, s: 1, e: 5}]",
        output_dir=tmp_path / "rec",
    )
    run_task(cfg, tmp_path / "rec")
    metrics, _ = read(tmp_path / "rec")
    assert metrics["cqil_p2_s1_e5_lora/recovery_steps"] == 3
    assert metrics["removed_2_lora/tinystories_ppl"] > 0
    cfg = make_config(
        "task=cqil", *SMALL, "cqil.mode=distributed", "cqil.settings=[{p: 2, s: 1, e: 5}]", output_dir=tmp_path / "dist"
    )
    run_task(cfg, tmp_path / "dist")
    metrics, _ = read(tmp_path / "dist")
    for corpus in ("wikitext2", "tinystories"):
        want = metrics[f"cqil_p2_s1_e5/sequential_{corpus}_ppl"]
        assert metrics[f"cqil_p2_s1_e5/{corpus}_ppl"] == pytest.approx(want, rel=1e-5)


def test_recovery_windows_skip_the_evaluation_tokens_and_interleave_corpora(tmp_path) -> None:
    from omegaconf import OmegaConf

    from experiments.tasks.cqil.task import recovery_windows

    (tmp_path / "a.txt").write_text("a" * 400)
    (tmp_path / "b.txt").write_text("b" * 400)

    class Bytes:
        encode = staticmethod(lambda text: list(text.encode()))

    def config(corpus):
        return OmegaConf.create(
            {
                "paths": {"data_dir": str(tmp_path)},
                "eval": {"max_tokens": 40},
                "cqil": {"recovery": {"corpus": corpus, "window": 20, "train_tokens": 100}},
            }
        )

    one = recovery_windows(config(str(tmp_path / "a.txt")), Bytes())
    assert one.shape == (5, 20)  # tokens 40..140: the 40 evaluation tokens are never trained on
    both = recovery_windows(config([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]), Bytes())
    assert both.shape == (10, 20) and both[:4, 0].tolist() == [ord("a"), ord("b"), ord("a"), ord("b")]


@pytest.mark.slow
@pytest.mark.skipif(not shared_memory_supported(), reason="shared-memory collectives need x86-64")
def test_latency_over_both_transports_is_keyed_by_mode(make_config, tmp_path, data_dir):
    """gloo and shared-memory ranks each get their own original baseline and `<mode>_*` keys, and both
    reproduce the sequential logits."""
    cfg = make_config(
        "task=cqil",
        *SMALL,
        "cqil.rule.enabled=false",
        "cqil.removal=false",
        "cqil.settings=[]",
        "cqil.latency.modes=[sequential,distributed,distributed_shm]",
        output_dir=tmp_path / "lat",
    )
    run_task(cfg, tmp_path / "lat")
    metrics, _ = read(tmp_path / "lat")
    for mode in ("sequential", "distributed", "distributed_shm"):
        assert metrics[f"cqil_p2_s1_e5/{mode}_latency_ratio"] > 0
    for mode in ("distributed", "distributed_shm"):
        assert metrics[f"cqil_p2_s1_e5/{mode}_max_logit_gap"] < 1e-4
    latency = json.loads((tmp_path / "lat" / "artifacts" / "latency.json").read_text())
    assert latency["cqil_p2_s1_e5/distributed"]["transport"] == "TorchCollectives"
    assert latency["cqil_p2_s1_e5/distributed_shm"]["transport"] == "SharedMemoryCollectives"
