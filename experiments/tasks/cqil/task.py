"""CQIL task: concurrent computation of quasi-independent layers (Zou et al., ACL 2024) as an
inference-time plugin on an HF LLaMA checkpoint.

One job: load the checkpoint (`model.loader`), score the original model, every CQIL setting of
`cqil.settings` and, beside each, the ShortGPT-style layer-removal baseline at equal ideal latency
(perplexity on each corpus of `dataset.corpora`, greedy agreement with the original), the layer
input-similarity heat map and the (S, E) proposal rule (`cqil.rule`), the latency table of
`cqil.latency` (original vs sequential / fused / distributed, one run; each ratio against the
original on one thread and against the original on as many cores as CQIL uses, `_same_cores`) and,
when `cqil.recovery.enabled`, LoRA + KD recovery of chosen settings (`_lora` keys; the adapters are
saved under the original layer names, `cqil.recovery.save`). Every CQIL setting the task builds
carries `cqil.bypass_residual`.
Metric keys: `<setting>/<metric>`, setting = original | cqil_p{P}_s{S}_e{E}[_d{D}] | removed_{k}.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from common.errors import UserError
from data.text_corpus import corpus_windows
from experiments.analysis.tables import markdown_table
from experiments.core.run_context import RunContext
from experiments.core.task import TaskResult
from models.cqil.analysis import (
    heatmap_figure,
    layer_inputs_similarity,
    layers_to_remove,
    propose_region,
    remove_layers,
    restore_layers,
)
from models.cqil.evaluate import agreement, greedy_tokens, perplexity, time_variants
from models.cqil.plugin import CQILSpec, apply_cqil, decoder_of, remove_cqil
from models.cqil.shm import DEFAULT_TIMEOUT_S

log = logging.getLogger(__name__)
SETTING_KEYS = {"p", "s", "e", "d"}


def bypass_residual(cfg: DictConfig) -> bool:
    """`cqil.bypass_residual`, which every CQIL setting of a run shares (it changes what D > 0 computes)."""
    value = cfg.cqil.get("bypass_residual", True)
    if not isinstance(value, bool):
        raise UserError(f"cqil.bypass_residual={value!r}: must be true or false")
    return value


def timeout_s(cfg: DictConfig) -> float:
    """`cqil.timeout_s`: how long a distributed rank waits for a peer before the job stops in one line."""
    value = cfg.cqil.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise UserError(f"cqil.timeout_s={value!r}: must be a number of seconds > 0")
    return float(value)


def parse_settings(nodes: Any, residual: bool, key: str = "cqil.settings") -> list[CQILSpec]:
    """CQIL settings {p, s, e, d} as specs; `residual` is `cqil.bypass_residual`, passed by every
    caller so no list of settings (grid, latency, recovery) runs another bypass than the run's."""
    specs = []
    for i, node in enumerate(nodes or []):
        unknown = set(node) - SETTING_KEYS
        if unknown or not {"p", "s", "e"} <= set(node):
            raise UserError(f"{key}[{i}]={dict(node)}: need keys p, s, e (and optional d); unknown {sorted(unknown)}")
        specs.append(CQILSpec(int(node["s"]), int(node["e"]), int(node["p"]), int(node.get("d", 0)), bypass_residual=residual))
    return specs


def saved_layers(spec: CQILSpec) -> int:
    """Layers CQIL saves in ideal latency: (E - S)(1 - 1/P), rounded (the removal baseline's k)."""
    return int(round(sum(len(g) - 1 for g in spec.groups())))


class Scorer:
    """Perplexity on every corpus plus greedy agreement with the original model's continuations."""

    def __init__(self, cfg: DictConfig, lm) -> None:
        ev = cfg.eval
        bound = cfg.task.get("limit")
        limit = (lambda n: n) if bound is None else (lambda n: min(n, int(bound)))
        self.model = lm.model
        self.windows = {}
        corpora = dict(cfg.dataset.corpora)
        if cfg.eval.get("text_file"):
            corpora["text"] = cfg.eval.text_file
        for name, source in corpora.items():
            w = corpus_windows(source, cfg.paths.data_dir, lm.encode, int(ev.window), ev.max_tokens)
            self.windows[name] = w[: limit(len(w))]
            log.info("corpus %s: %d windows of %d tokens", name, len(self.windows[name]), int(ev.window))
        first = next(iter(self.windows.values()))
        n_prompts = limit(int(ev.greedy_prompts))
        self.prompts = [first[i % len(first), : int(ev.prompt_tokens)] for i in range(n_prompts)]
        self.new_tokens = int(ev.greedy_tokens) if bound is None else min(4, int(ev.greedy_tokens))
        self.batch_size = int(ev.batch_size)
        self.reference = greedy_tokens(self.model, self.prompts, self.new_tokens)

    def score(self, greedy: bool = True) -> dict[str, float]:
        out = {f"{name}_ppl": perplexity(self.model, w, self.batch_size) for name, w in self.windows.items()}
        if greedy:
            out["greedy_agreement"] = agreement(self.reference, greedy_tokens(self.model, self.prompts, self.new_tokens))
        return out


# Latency modes that run in spawned ranks, and the transport of their per-token collectives.
DISTRIBUTED_LATENCY_MODES = {"distributed": "dist", "distributed_shm": "shm"}
# Shared memory carries CPU tensors between same-host CPU ranks: its ranks run on gloo even where GPUs exist.
LATENCY_BACKENDS = {"distributed": None, "distributed_shm": "gloo"}
LATENCY_MODES = ("sequential", "fused", *DISTRIBUTED_LATENCY_MODES)
RANK_THREADS = 1  # intra-op threads per distributed rank: P devices emulated by P one-thread processes


def baseline_key(mode: str) -> str:
    """The latency-table entry a mode is compared with: distributed modes time their own original on the
    same ranks (every rank busy alike; on GPUs the original on one GPU), the single-process modes share
    the `threads`-thread original."""
    return f"original@{mode}" if mode in DISTRIBUTED_LATENCY_MODES else "original"


def cqil_threads(mode: str, lat: Mapping[str, Any]) -> int:
    """CPU threads CQIL uses in all in `mode`: `world_size` ranks x one thread for the distributed modes,
    `cqil.latency.threads` for sequential / fused (one process)."""
    return int(lat["world_size"]) * RANK_THREADS if mode in DISTRIBUTED_LATENCY_MODES else int(lat["threads"])


def same_cores_key(mode: str, lat: Mapping[str, Any]) -> str:
    """The latency-table entry of the original on as many CPU threads as CQIL uses in `mode`: CQIL has to
    beat what those cores give the original through intra-op threads, not only one thread. For
    sequential / fused that is the `threads`-thread original itself."""
    count = cqil_threads(mode, lat)
    return "original" if count == int(lat["threads"]) else f"original@{count}_threads"


def ranks_on_gpus(world_size: int) -> bool:
    """Whether spawned ranks get NCCL and a GPU each (the rule of models.cqil.distributed.spawn)."""
    return torch.cuda.is_available() and torch.cuda.device_count() >= world_size


def check_latency_modes(modes: list[str]) -> None:
    unknown = [m for m in modes if m not in LATENCY_MODES]
    if unknown:
        raise UserError(f"cqil.latency.modes: {unknown} not among {list(LATENCY_MODES)}")


def latency_table(cfg: DictConfig, lm, specs: list[CQILSpec], modes: list[str]) -> dict[str, dict[str, Any]]:
    """Median prefill / decode seconds of the original and of each (spec, mode), each entry with the
    threads and device it ran on. The original and sequential / fused run on `threads` threads; the
    distributed modes run in `world_size` spawned processes (one thread each, or one GPU each under
    NCCL) measured on rank 0: `distributed` over torch.distributed (gloo / NCCL), `distributed_shm` over
    shared memory. Beside them the original runs on as many CPU threads as each mode uses in all
    (`same_cores_key`), interleaved with the others; on GPUs that comparison would be tensor
    parallelism, which is not timed, so GPU ranks get none."""
    check_latency_modes(modes)
    lat = cfg.cqil.latency
    vocab = int(lm.model.get_input_embeddings().num_embeddings)
    prompt = torch.randint(0, vocab, (1, int(lat.prompt_tokens)), generator=torch.Generator().manual_seed(0))
    decoder = decoder_of(lm.model)
    variants, threads = {"original": decoder.layers}, {"original": int(lat.threads)}
    on_gpus = ranks_on_gpus(int(lat.world_size))
    for mode in modes:
        if mode in DISTRIBUTED_LATENCY_MODES and on_gpus and LATENCY_BACKENDS[mode] is None:
            continue
        variants[same_cores_key(mode, lat)] = decoder.layers
        threads[same_cores_key(mode, lat)] = cqil_threads(mode, lat)
    for spec in specs:
        for mode in (m for m in modes if m not in DISTRIBUTED_LATENCY_MODES):
            apply_cqil(lm.model, spec, mode=mode)
            variants[f"{spec.name}/{mode}"] = decoder.layers
            threads[f"{spec.name}/{mode}"] = int(lat.threads)
            remove_cqil(lm.model)
    table: dict[str, dict[str, Any]] = dict(
        time_variants(lm.model, variants, prompt, int(lat.decode_steps), int(lat.repeats), int(lat.warmup), threads)
    )
    for name, count in threads.items():
        table[name].update(threads=count, device="cpu")
    loader = OmegaConf.to_container(cfg.model.loader, resolve=True)
    capacity = int(lat.prompt_tokens) * int(lm.model.config.hidden_size)  # the largest tensor a collective carries
    for mode in (m for m in modes if m in DISTRIBUTED_LATENCY_MODES):
        from models.cqil.distributed import spawn

        raw_specs = [dataclasses.asdict(s) for s in specs]  # every field, bypass_residual included
        job = functools.partial(distributed_latency_job, loader, raw_specs, prompt, dict(lat), mode)
        comm = DISTRIBUTED_LATENCY_MODES[mode]
        table.update(
            spawn(
                job,
                world_size=int(lat.world_size),
                threads=RANK_THREADS,
                comm=comm,
                shm_capacity=capacity,
                timeout_s=timeout_s(cfg),
                backend=LATENCY_BACKENDS[mode],
            )
        )
    return table


def distributed_latency_job(
    loader: dict, specs: list[dict], prompt: torch.Tensor, lat: dict, mode: str, rank: int, world: int
) -> dict:
    """Runs on every rank: time the original (all ranks busy alike), then each spec in distributed
    mode; rank 0's medians are returned, keyed by `mode`. Also returns the max |logit| gap to sequential
    mode. Under NCCL each rank computes on its own GPU, so the baseline is the original on one GPU."""
    from models.cqil.distributed import rank_device

    lm = instantiate(loader)
    device = rank_device()
    lm.model.to(device)
    prompt = prompt.to(device)
    decoder = decoder_of(lm.model)
    variants, gaps = {baseline_key(mode): decoder.layers}, {}
    with torch.no_grad():
        for raw in specs:
            spec = CQILSpec(**raw)
            apply_cqil(lm.model, spec, mode="sequential")
            sequential = lm.model(prompt).logits
            remove_cqil(lm.model)
            apply_cqil(lm.model, spec, mode="distributed")
            gaps[spec.name] = float((lm.model(prompt).logits - sequential).abs().max())
            variants[f"{spec.name}/{mode}"] = decoder.layers
            remove_cqil(lm.model)
    table = time_variants(lm.model, variants, prompt, int(lat["decode_steps"]), int(lat["repeats"]), int(lat["warmup"]))
    from models.cqil.shm import collectives

    for entry in table.values():
        entry.update(ranks=world, threads_per_rank=torch.get_num_threads(), threads=world * torch.get_num_threads())
        entry["device"] = device.type
    for name, gap in gaps.items():
        table[f"{name}/{mode}"]["max_logit_gap_vs_sequential"] = gap
        table[f"{name}/{mode}"]["transport"] = type(collectives()).__name__  # which collectives really ran
    return table


def recovery_windows(cfg: DictConfig, lm) -> torch.Tensor:
    """Training windows for recovery: each recovery corpus's tokens AFTER the evaluation budget, so the
    student never trains on the text it is scored on. `cqil.recovery.corpus` is one corpus or a list;
    a list's windows are interleaved (`train_tokens` per corpus), so every stretch of steps sees each."""
    rec, ev = cfg.cqil.recovery, cfg.eval
    skip = int(ev.max_tokens) if ev.max_tokens is not None else None
    if skip is None:
        raise UserError("cqil.recovery needs eval.max_tokens set (training text starts after the evaluation tokens)")
    names = [rec.corpus] if isinstance(rec.corpus, str) else list(rec.corpus)
    start = -(-skip // int(rec.window))  # whole windows past the evaluation tokens
    parts = []
    for name in names:
        windows = corpus_windows(name, cfg.paths.data_dir, lm.encode, int(rec.window), skip + int(rec.train_tokens))
        if len(windows) <= start:
            raise UserError(f"cqil.recovery.corpus={name}: no text left after the {skip} evaluation tokens")
        parts.append(windows[start:])
    if len(parts) == 1:
        return parts[0]
    count = min(len(part) for part in parts)  # round-robin over equal shares
    return torch.stack([part[i] for i in range(count) for part in parts])


def recovered_dir(ctx: RunContext, setting: str, how: str) -> Path:
    """Where a recovered setting's adapters (`artifacts/recovered/<setting>`) or merged model
    (`artifacts/recovered/<setting>_merged`) go."""
    return ctx.artifact_path(f"recovered/{setting}" + ("_merged" if how == "merged" else ""))


def recover_and_score(cfg: DictConfig, ctx: RunContext, lm, scorer: Scorer, similarity: torch.Tensor):
    """LoRA + KD recovery (models/cqil/recovery.py) of each `cqil.recovery.settings` entry (and its
    equal-latency removal baseline), scored like the others; yields (setting, values, factors). After
    scoring, CQIL (or the removal) is undone while the adapters are still in the layers, so what
    `cqil.recovery.save` writes is keyed by the original layer names and loads onto the plain model."""
    from experiments.core.run_context import is_global_zero
    from experiments.core.training import build_trainer
    from models.cqil.recovery import recover, recovery_settings, save_recovered

    rec = cfg.cqil.recovery
    how = check_recovery_save(cfg)
    windows = recovery_windows(cfg, lm)
    num_layers = len(decoder_of(lm.model).layers)

    def make_trainer(fit_name: str, steps: int):
        return build_trainer(
            cfg, ctx, fit_name, max_steps=steps, max_epochs=-1, min_epochs=None, val_check_interval=None, limit_val_batches=0
        )

    steps = ctx.limit(int(rec.steps))
    specs = parse_settings(rec.settings, bypass_residual(cfg), "cqil.recovery.settings")
    settings = recovery_settings(specs, bool(rec.removal), similarity, saved_layers)
    for setting in settings:
        name, factors = setting.name, dict(setting.factors)
        setting.apply(lm.model)
        applied = True
        try:
            peft_model, module = recover(
                lm.model,
                make_trainer,
                name,
                windows,
                steps,
                int(rec.batch_size),
                float(rec.lr),
                int(rec.rank),
                int(rec.alpha),
                float(rec.temperature),
            )
            try:
                values = scorer.score()
                setting.undo(lm.model)
                applied = False
                if how != "none" and is_global_zero():
                    out = save_recovered(peft_model, recovered_dir(ctx, name, how), how, setting.layout)
                    factors["saved"] = str(out.relative_to(ctx.output_dir))
                    log.info("%s: recovered %s saved to %s", name, how, out)
            finally:
                peft_model.unload()
        finally:
            if applied:
                setting.undo(lm.model)
        saved = (factors["e"] - factors["s"]) * (1 - 1 / factors["p"]) if "p" in factors else factors["removed"]
        values["ideal_latency_ratio"] = 1.0 - saved / num_layers
        values["recovery_steps"] = float(steps)
        times = sorted(module.step_seconds)
        values["seconds_per_step"] = float(times[len(times) // 2]) if times else float("nan")
        log.info("%s: %s", name, values)
        yield name, values, factors


class Results:
    """What the stages collect: metrics keyed `<setting>/<metric>` and one record per scored setting."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self.records: list[dict[str, Any]] = []

    def add(self, setting: str, kind: str, values: dict[str, float], **factors: Any) -> None:
        self.metrics.update(prefixed(setting, values))
        self.records.append({"setting": setting, "kind": kind, **factors, **values})


def prefixed(setting: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{setting}/{k}": v for k, v in values.items()}


def spec_factors(spec: CQILSpec) -> dict[str, int]:
    """A setting's factors under the names the records (and `cqil.settings`) use."""
    return {"p": spec.parallel_degree, "s": spec.start, "e": spec.end, "d": spec.bypass_distance}


def check_latency_config(cfg: DictConfig) -> None:
    """Refuse unknown latency modes before the model loads and the grid runs, not minutes later."""
    if cfg.cqil.latency.enabled:
        check_latency_modes(list(cfg.cqil.latency.modes))


def check_recovery_save(cfg: DictConfig) -> str:
    """`cqil.recovery.save`: `adapters` (PEFT folder), `merged` (the plain model with the adapters
    merged, save_pretrained) or `none`."""
    from models.cqil.recovery import SAVE_CHOICES

    how = cfg.cqil.recovery.get("save", "adapters")
    if how not in SAVE_CHOICES:
        raise UserError(f"cqil.recovery.save={how!r}: choose one of {', '.join(SAVE_CHOICES)}")
    return str(how)


def check_config(cfg: DictConfig) -> None:
    """Refuse bad keys before the model loads and the grid runs, not minutes later."""
    bypass_residual(cfg)
    timeout_s(cfg)
    check_latency_config(cfg)
    if cfg.cqil.recovery.enabled:
        check_recovery_save(cfg)


def load_model(cfg: DictConfig):
    """Seed, then load the checkpoint `model.loader` names: the seed fixes everything random
    downstream (timing prompts, recovery batches), so a run repeats."""
    torch.manual_seed(int(cfg.seed))
    return instantiate(cfg.model.loader)


def layer_count(lm) -> int:
    """Layers of the untouched model: the denominator of every ideal latency ratio."""
    return len(decoder_of(lm.model).layers)


def build_specs(cfg: DictConfig) -> list[CQILSpec]:
    """The CQIL settings of `cqil.settings`; scoring, the removal baseline and the table all follow them."""
    return parse_settings(cfg.cqil.settings, bypass_residual(cfg))


def score_original(scorer: Scorer, results: Results) -> dict[str, float]:
    """Score the untouched model first: every other setting's perplexity rise is measured against it.
    Returns its perplexities (`<corpus>_ppl`)."""
    values = scorer.score()
    results.add("original", "original", {**values, "ideal_latency_ratio": 1.0})
    return {k: v for k, v in values.items() if k.endswith("_ppl")}


def analyse_similarity(cfg: DictConfig, ctx: RunContext, lm, scorer: Scorer) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer-input cosine similarity on the calibration windows, computed once because the heat map,
    the removal order and the (S, E) rule all read it. Returns (similarity, calibration windows)."""
    calib = scorer.windows[cfg.cqil.rule.corpus][: ctx.limit(int(cfg.cqil.rule.calibration_windows))]
    similarity = layer_inputs_similarity(lm.model, calib)
    ctx.save_figure(heatmap_figure(similarity, f"{cfg.model.name}: layer-input cosine similarity"), "layer_similarity")
    ctx.write_artifact("layer_similarity.csv", "\n".join(",".join(f"{v:.5f}" for v in row) for row in similarity.tolist()) + "\n")
    return similarity, calib


def score_cqil_settings(cfg: DictConfig, lm, scorer: Scorer, specs: list[CQILSpec], num_layers: int, results: Results) -> None:
    """Score every CQIL setting (`build_specs`: they carry `cqil.bypass_residual`) with its groups run
    as `cqil.mode`: the task's main result, the model restored after each."""
    for spec in specs:
        apply_cqil(lm.model, spec, mode=cfg.cqil.mode)
        try:
            values = scorer.score()
        finally:
            remove_cqil(lm.model)
        values["ideal_latency_ratio"] = spec.ideal_latency_ratio(num_layers)
        results.add(spec.name, "cqil", values, **spec_factors(spec))
        log.info("%s: %s", spec.name, values)


def score_removal_baselines(
    lm, scorer: Scorer, specs: list[CQILSpec], similarity: torch.Tensor, num_layers: int, results: Results
) -> None:
    """Drop the k most redundant layers (ShortGPT-style) for each k a CQIL setting saves: the baseline
    at equal ideal latency that CQIL has to beat."""
    for k in sorted({saved_layers(s) for s in specs}):
        remove_layers(lm.model, layers_to_remove(similarity, k))
        try:
            values = scorer.score()
        finally:
            restore_layers(lm.model)
        results.add(f"removed_{k}", "removed", {**values, "ideal_latency_ratio": 1.0 - k / num_layers}, removed=k)
        log.info("removed_%d: %s", k, values)


def propose_with_rule(cfg: DictConfig, ctx: RunContext, lm, similarity: torch.Tensor, calib: torch.Tensor) -> dict[str, float]:
    """The (S, E) proposal rule of `cqil.rule`: a window of similar layer inputs whose calibration
    perplexity rise stays in bound, so a user need not search the grid; `rule_p{P}/*` metrics."""
    rule = cfg.cqil.rule
    residual = bypass_residual(cfg)
    calib_base = perplexity(lm.model, calib)

    def rise(spec: CQILSpec) -> float:
        spec = dataclasses.replace(spec, bypass_residual=residual)  # the rule scores what the run would run
        apply_cqil(lm.model, spec)
        try:
            value = perplexity(lm.model, calib) / calib_base - 1.0
        finally:
            remove_cqil(lm.model)
        log.info("rule: %s calibration ppl rise %+.1f %%", spec.name, 100 * value)
        return value

    proposal = propose_region(
        similarity,
        int(rule.parallel_degree),
        float(rule.similarity_bound),
        float(rule.max_ppl_rise),
        rise,
        ctx.limit(int(rule.max_evaluations)),
    )
    key = f"rule_p{int(rule.parallel_degree)}"
    if proposal is None:
        return {f"{key}/found": 0.0}
    return {
        f"{key}/found": 1.0,
        f"{key}/start": proposal.start,
        f"{key}/end": proposal.end,
        f"{key}/calibration_ppl_rise": proposal.ppl_rise,
        f"{key}/min_similarity": proposal.min_similarity,
        f"{key}/evaluations": proposal.evaluated,
    }


def latency_ratios(
    table: dict[str, dict[str, Any]], spec: CQILSpec, modes: list[str], num_layers: int, lat: Mapping[str, Any]
) -> dict[str, float]:
    """CQIL / original decode and prefill time per mode, beside the ideal ratio they aim at: against
    the baseline timed like it (`<mode>_latency_ratio`: the one-thread original, or per rank) and
    against the original on as many cores as the mode uses (`<mode>_latency_ratio_same_cores`; absent
    where that original was not timed on the mode's device, i.e. on GPUs)."""
    values = {"ideal_latency_ratio": spec.ideal_latency_ratio(num_layers)}
    for mode in modes:
        entry = table.get(f"{spec.name}/{mode}")
        if entry is None:
            continue
        for suffix, key in (("", baseline_key(mode)), ("_same_cores", same_cores_key(mode, lat))):
            ref = table.get(key)
            if ref is None or ref.get("device", "cpu") != entry.get("device", "cpu"):
                continue
            values[f"{mode}_latency_ratio{suffix}"] = entry["decode_s"] / ref["decode_s"]
            values[f"{mode}_prefill_latency_ratio{suffix}"] = entry["prefill_s"] / ref["prefill_s"]
        if "max_logit_gap_vs_sequential" in entry:
            values[f"{mode}_max_logit_gap"] = entry["max_logit_gap_vs_sequential"]
    return values


def measure_latency(cfg: DictConfig, ctx: RunContext, lm, num_layers: int, results: Results) -> None:
    """Time the original and each `cqil.latency.settings` entry in every mode in one run, so all ratios
    share the machine's load; the raw timings go to latency.json."""
    lat = cfg.cqil.latency
    lat_specs = parse_settings(lat.settings, bypass_residual(cfg), "cqil.latency.settings")
    table = latency_table(cfg, lm, lat_specs, list(lat.modes))
    ctx.write_artifact("latency.json", json.dumps(table, indent=1))
    for spec in lat_specs:
        ratios = latency_ratios(table, spec, list(lat.modes), num_layers, lat)
        results.add(spec.name, "latency", ratios, **spec_factors(spec))


def score_recovered(cfg: DictConfig, ctx: RunContext, lm, scorer: Scorer, similarity: torch.Tensor, results: Results) -> None:
    """LoRA + KD recovery of `cqil.recovery.settings` (and their removal baselines): how much of the
    quality CQIL loses a short fine-tune wins back; `_lora` settings."""
    for setting, values, factors in recover_and_score(cfg, ctx, lm, scorer, similarity):
        results.add(setting, factors.pop("kind"), values, **factors)


def summarize(results: Results, base: dict[str, float], specs: list[CQILSpec], corpora: list[str]) -> TaskResult:
    """The run's output: the collected metrics and records, and the Markdown table a reader compares."""
    table = results_table(results.metrics, base, specs, corpora)
    return TaskResult(metrics=results.metrics, table=table, records=results.records)


def run(cfg: DictConfig, ctx: RunContext) -> TaskResult:
    """The task, stage by stage (keys in the module docstring); the optional stages follow `cqil.*`."""
    check_config(cfg)
    if cfg.cqil.mode == "distributed":
        return run_distributed(cfg, ctx)
    lm = load_model(cfg)
    num_layers = layer_count(lm)
    specs = build_specs(cfg)
    scorer = Scorer(cfg, lm)
    results = Results()
    base = score_original(scorer, results)
    similarity, calib = analyse_similarity(cfg, ctx, lm, scorer)
    score_cqil_settings(cfg, lm, scorer, specs, num_layers, results)
    if cfg.cqil.removal:
        score_removal_baselines(lm, scorer, specs, similarity, num_layers, results)
    if cfg.cqil.rule.enabled:
        results.metrics.update(propose_with_rule(cfg, ctx, lm, similarity, calib))
    if cfg.cqil.latency.enabled:
        measure_latency(cfg, ctx, lm, num_layers, results)
    if cfg.cqil.recovery.enabled:
        score_recovered(cfg, ctx, lm, scorer, similarity, results)
    return summarize(results, base, specs, list(scorer.windows))


def score_both_modes(lm, scorer: Scorer, spec: CQILSpec) -> dict[str, float]:
    """Score `spec` in sequential mode (perplexity only), then in distributed mode: the two must agree,
    so the sequential perplexities travel along as `sequential_<corpus>_ppl`."""
    apply_cqil(lm.model, spec, mode="sequential")
    sequential = scorer.score(greedy=False)
    remove_cqil(lm.model)
    apply_cqil(lm.model, spec, mode="distributed")
    try:
        values = scorer.score()
    finally:
        remove_cqil(lm.model)
    for key, value in sequential.items():
        values[f"sequential_{key}"] = value
    return values


def distributed_scores(cfg_dict: dict, rank: int, world: int) -> dict[str, Any]:
    """On every rank: score the original, then each setting in sequential mode and in distributed
    mode (same windows, same prompts); rank 0's result is the task's."""
    from models.cqil.distributed import rank_device

    cfg = OmegaConf.create(cfg_dict)
    lm = load_model(cfg)
    lm.model.to(rank_device())  # under NCCL the rank's GPU; the scorer's inputs follow the model
    num_layers = layer_count(lm)
    scorer = Scorer(cfg, lm)
    results = Results()
    results.metrics.update(prefixed("original", scorer.score()))
    for spec in build_specs(cfg):
        values = score_both_modes(lm, scorer, spec)
        values["ideal_latency_ratio"] = spec.ideal_latency_ratio(num_layers)
        values["world_size"] = float(world)
        results.add(spec.name, "cqil_distributed", values, **spec_factors(spec))
    return {"metrics": results.metrics, "records": results.records}


def score_on_ranks(cfg: DictConfig) -> dict[str, Any]:
    """Run `distributed_scores` on every rank: in place when torchrun started this process as one of
    its ranks, else in `cqil.world_size` spawned processes; returns rank 0's result."""
    from models.cqil.distributed import init_from_env, spawn

    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    if init_from_env(timeout_s=timeout_s(cfg)):
        import torch.distributed as dist

        return distributed_scores(container, dist.get_rank(), dist.get_world_size())
    return spawn(
        functools.partial(distributed_scores, container),
        world_size=int(cfg.cqil.world_size),
        threads=int(cfg.cqil.threads_per_rank),
        timeout_s=timeout_s(cfg),
    )


def run_distributed(cfg: DictConfig, ctx: RunContext) -> TaskResult:
    """`cqil.mode=distributed`: under torchrun every rank runs this job (rank 0 writes); from plain
    `run.py`, `cqil.world_size` processes are spawned (gloo on CPU, NCCL with enough GPUs)."""
    out = score_on_ranks(cfg)
    table = distributed_table(out["metrics"], build_specs(cfg))
    return TaskResult(metrics=out["metrics"], table=table, records=out["records"])


def distributed_table(metrics: dict[str, float], specs: list[CQILSpec]) -> str:
    """Markdown: sequential vs distributed perplexity per setting and corpus (they must agree), and the
    distributed model's greedy agreement with the original."""
    corpora = [k.split("/")[1][: -len("_ppl")] for k in metrics if k.startswith("original/") and k.endswith("_ppl")]
    header = ["setting", "corpus", "sequential ppl", "distributed ppl", "greedy agreement (distributed)"]
    rows = [
        [
            spec.name,
            corpus,
            f"{metrics[f'{spec.name}/sequential_{corpus}_ppl']:.4f}",
            f"{metrics[f'{spec.name}/{corpus}_ppl']:.4f}",
            f"{metrics[f'{spec.name}/greedy_agreement']:.3f}",
        ]
        for spec in specs
        for corpus in corpora
    ]
    return markdown_table(header, rows)


def table_settings(metrics: dict[str, float], specs: list[CQILSpec]) -> list[str]:
    """Rows of the results table in reading order: the original, each CQIL setting beside its
    equal-latency removal, then the recovered ones; each once, and only those scored."""
    settings = ["original"]
    for spec in specs:
        settings += [spec.name, f"removed_{saved_layers(spec)}"]
    settings += sorted({k.split("/")[0] for k in metrics if k.endswith("_lora/greedy_agreement")})
    return [s for i, s in enumerate(settings) if s not in settings[:i] and f"{s}/greedy_agreement" in metrics]


def results_table(metrics: dict[str, float], base: dict[str, float], specs: list[CQILSpec], corpora: list[str]) -> str:
    """Markdown: every setting's perplexities (and rise vs the original), agreement, ideal latency,
    with the removal baseline at equal ideal latency beside each CQIL setting."""
    header = ["setting", *(f"{c} ppl (rise)" for c in corpora), "greedy agreement", "ideal latency"]
    rows = []
    for s in table_settings(metrics, specs):
        cells = []
        for c in corpora:
            v = metrics.get(f"{s}/{c}_ppl")
            cells.append("–" if v is None else f"{v:.2f} ({100 * (v / base[f'{c}_ppl'] - 1):+.1f} %)")
        ideal = metrics.get(f"{s}/ideal_latency_ratio", float("nan"))
        rows.append([s, *cells, f"{metrics[f'{s}/greedy_agreement']:.3f}", f"{ideal:.3f}"])
    blocks = [markdown_table(header, rows)]
    lat_rows = latency_rows(metrics)
    if lat_rows:
        blocks += ["", markdown_table(LATENCY_HEADER, lat_rows)]
    blocks += [f"\n{key} = {metrics[key]:.4g}" for key in sorted(k for k in metrics if k.startswith("rule_"))]
    return "\n".join(blocks)


# The latency block of results.md: per (setting, mode), each ratio against the original timed like the
# mode (one thread, or per rank) and against the original on as many cores as the mode uses.
LATENCY_HEADER = [
    "latency setting",
    "mode",
    "ideal",
    "decode: CQIL / original",
    "decode: same cores",
    "prefill: CQIL / original",
    "prefill: same cores",
]
LATENCY_METRICS = ("latency_ratio", "latency_ratio_same_cores", "prefill_latency_ratio", "prefill_latency_ratio_same_cores")


def latency_rows(metrics: dict[str, float]) -> list[list[str]]:
    """One row per (setting, mode) timed: the ratio against the original timed like the mode (one
    thread, or per rank) beside the one against the original on as many cores as the mode uses."""

    def cell(key: str) -> str:
        return f"{metrics[key]:.3f}" if key in metrics else "–"

    settings = sorted({k.split("/")[0] for k in metrics if k.endswith("_latency_ratio")})
    return [
        [setting, mode, cell(f"{setting}/ideal_latency_ratio"), *(cell(f"{setting}/{mode}_{m}") for m in LATENCY_METRICS)]
        for setting in settings
        for mode in LATENCY_MODES
        if f"{setting}/{mode}_latency_ratio" in metrics
    ]
