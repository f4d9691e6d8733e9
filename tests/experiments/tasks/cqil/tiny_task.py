"""The CQIL task around the tiny random LLaMA and a small text file: every stage of
`experiments.tasks.cqil.task.run` in seconds, without a checkpoint or a corpus download."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, open_dict

from models.cqil.checkpoints import LanguageModel
from tests.models.cqil.tiny import tiny_llama

TEXT = "Once upon a time a small model read the same story again and again, and every layer agreed. " * 40
SETTING = {"p": 2, "s": 0, "e": 4, "d": 1}  # D = 1: the only case where bypass_residual changes the output
OVERRIDES = (
    "task=cqil",
    "model=cqil_stories260k",
    "cqil=stories260k",
    "logger=none",
    "callbacks=none",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "cqil.bypass_residual=false",
    "eval.window=16",
    "eval.max_tokens=64",
    "eval.greedy_prompts=1",
    "eval.prompt_tokens=4",
    "eval.greedy_tokens=2",
    "cqil.rule.corpus=text",
    "cqil.rule.calibration_windows=1",
    "cqil.rule.similarity_bound=0.0",
    "cqil.rule.max_evaluations=2",
    "cqil.latency.modes=[sequential,fused,distributed,distributed_shm]",
    "cqil.latency.prompt_tokens=8",
    "cqil.latency.decode_steps=1",
    "cqil.latency.repeats=1",
    "cqil.latency.warmup=0",
    "cqil.recovery.steps=1",
    "cqil.recovery.window=16",
    "cqil.recovery.train_tokens=64",
    "cqil.recovery.rank=4",
    "cqil.recovery.alpha=4",
)


def encode(text: str) -> list[int]:
    return [b % 97 for b in text.encode()]


def decode(ids: Sequence[int]) -> str:
    return " ".join(str(i) for i in ids)


def tiny_lm() -> LanguageModel:
    """The loader `model.loader` names: the same weights in every process (seeded)."""
    return LanguageModel(tiny_llama(), encode, decode, None)


def tiny_task_config(make_config: Callable[..., DictConfig], tmp_path: Path, *overrides: str) -> DictConfig:
    """The stories260K task config scaled to the 4-layer tiny model and one corpus `text` (a file in
    tmp_path), with `cqil.bypass_residual=false` and every setting list set to `SETTING`."""
    setting = "[{" + ", ".join(f"{k}: {v}" for k, v in SETTING.items()) + "}]"
    settings = [f"cqil.settings={setting}", f"cqil.latency.settings={setting}", f"cqil.recovery.settings={setting}"]
    cfg = make_config(*OVERRIDES, *settings, *overrides)
    corpus = tmp_path / "text.txt"
    corpus.write_text(TEXT)
    with open_dict(cfg):
        cfg.model.loader = {"_target_": f"{__name__}.tiny_lm"}
        cfg.dataset.corpora = {"text": str(corpus)}
        cfg.cqil.recovery.corpus = str(corpus)
    return cfg


def inline_spawn(job: Callable[[int, int], Any], world_size: int, threads: int = 1, **kwargs: Any) -> Any:
    """`models.cqil.distributed.spawn` in this process: rank 0's job on `threads` threads (the caller
    swaps distributed mode for sequential, there being no other rank)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return job(0, world_size)
    finally:
        torch.set_num_threads(before)
