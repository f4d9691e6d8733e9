"""CQIL task: concurrent computation of quasi-independent layers (Zou et al., ACL 2024) as an
inference-time plugin on an HF LLaMA checkpoint.

One job: load the checkpoint (`model.loader`), score the original model, every CQIL setting of
`cqil.settings` and, beside each, the ShortGPT-style layer-removal baseline at equal ideal latency
(perplexity on each corpus of `dataset.corpora`, greedy agreement with the original), the layer
input-similarity heat map and the (S, E) proposal rule (`cqil.rule`), the latency table of
`cqil.latency` (original vs sequential / fused / distributed, one run) and, when
`cqil.recovery.enabled`, LoRA + KD recovery of chosen settings (`_lora` keys).
Metric keys: `<setting>/<metric>`, setting = original | cqil_p{P}_s{S}_e{E}[_d{D}] | removed_{k}.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
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

log = logging.getLogger(__name__)
SETTING_KEYS = {"p", "s", "e", "d"}


def parse_settings(nodes: Any) -> list[CQILSpec]:
    specs = []
    for i, node in enumerate(nodes or []):
        unknown = set(node) - SETTING_KEYS
        if unknown or not {"p", "s", "e"} <= set(node):
            raise UserError(f"cqil.settings[{i}]={dict(node)}: need keys p, s, e (and optional d); unknown {sorted(unknown)}")
        specs.append(CQILSpec(int(node["s"]), int(node["e"]), int(node["p"]), int(node.get("d", 0))))
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
LATENCY_MODES = ("sequential", "fused", *DISTRIBUTED_LATENCY_MODES)


def baseline_key(mode: str) -> str:
    """The latency-table entry a mode is compared with: distributed modes time their own original on the
    same ranks (every rank busy alike), the single-process modes share the one-thread original."""
    return f"original@{mode}" if mode in DISTRIBUTED_LATENCY_MODES else "original"


def check_latency_modes(modes: list[str]) -> None:
    unknown = [m for m in modes if m not in LATENCY_MODES]
    if unknown:
        raise UserError(f"cqil.latency.modes: {unknown} not among {list(LATENCY_MODES)}")


def latency_table(cfg: DictConfig, lm, specs: list[CQILSpec], modes: list[str]) -> dict[str, dict[str, float]]:
    """Median prefill / decode seconds of the original and of each (spec, mode) on `threads` threads;
    the distributed modes run in `world_size` spawned processes (one thread each) measured on rank 0:
    `distributed` over torch.distributed (gloo / NCCL), `distributed_shm` over shared memory."""
    check_latency_modes(modes)
    lat = cfg.cqil.latency
    vocab = int(lm.model.get_input_embeddings().num_embeddings)
    prompt = torch.randint(0, vocab, (1, int(lat.prompt_tokens)), generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    torch.set_num_threads(int(lat.threads))
    decoder = decoder_of(lm.model)
    variants = {"original": decoder.layers}
    for spec in specs:
        for mode in (m for m in modes if m not in DISTRIBUTED_LATENCY_MODES):
            apply_cqil(lm.model, spec, mode=mode)
            variants[f"{spec.name}/{mode}"] = decoder.layers
            remove_cqil(lm.model)
    try:
        table = time_variants(lm.model, variants, prompt, int(lat.decode_steps), int(lat.repeats), int(lat.warmup))
    finally:
        torch.set_num_threads(threads)
    loader = OmegaConf.to_container(cfg.model.loader, resolve=True)
    capacity = int(lat.prompt_tokens) * int(lm.model.config.hidden_size)  # the largest tensor a collective carries
    for mode in (m for m in modes if m in DISTRIBUTED_LATENCY_MODES):
        from models.cqil.distributed import spawn

        job = functools.partial(distributed_latency_job, loader, [s.__dict__ for s in specs], prompt, dict(lat), mode)
        comm = DISTRIBUTED_LATENCY_MODES[mode]
        table.update(spawn(job, world_size=int(lat.world_size), threads=1, comm=comm, shm_capacity=capacity))
    return table


def distributed_latency_job(
    loader: dict, specs: list[dict], prompt: torch.Tensor, lat: dict, mode: str, rank: int, world: int
) -> dict:
    """Runs on every rank: time the original (all ranks busy alike), then each spec in distributed
    mode; rank 0's medians are returned, keyed by `mode`. Also returns the max |logit| gap to sequential mode."""
    lm = instantiate(loader)
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


def recover_and_score(cfg: DictConfig, ctx: RunContext, lm, scorer: Scorer, similarity: torch.Tensor):
    """LoRA + KD recovery (models/cqil/recovery.py) of each `cqil.recovery.settings` entry (and its
    equal-latency removal baseline), scored like the others; yields (setting, values, factors)."""
    from experiments.core.training import build_trainer
    from models.cqil.recovery import recover, recovery_settings

    rec = cfg.cqil.recovery
    windows = recovery_windows(cfg, lm)
    num_layers = len(decoder_of(lm.model).layers)

    def make_trainer(fit_name: str, steps: int):
        return build_trainer(
            cfg, ctx, fit_name, max_steps=steps, max_epochs=-1, min_epochs=None, val_check_interval=None, limit_val_batches=0
        )

    steps = ctx.limit(int(rec.steps))
    settings = recovery_settings(parse_settings(rec.settings), bool(rec.removal), similarity, saved_layers)
    for name, apply, undo, factors in settings:
        apply(lm.model)
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
            values = scorer.score()
            peft_model.unload()
        finally:
            undo(lm.model)
        saved = (factors["e"] - factors["s"]) * (1 - 1 / factors["p"]) if "p" in factors else factors["removed"]
        values["ideal_latency_ratio"] = 1.0 - saved / num_layers
        values["recovery_steps"] = float(steps)
        times = sorted(module.step_seconds)
        values["seconds_per_step"] = float(times[len(times) // 2]) if times else float("nan")
        log.info("%s: %s", name, values)
        yield name, values, dict(factors)


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
    return parse_settings(cfg.cqil.settings)


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
    """Score every CQIL setting with its groups run as `cqil.mode` and `cqil.bypass_residual`: the
    task's main result, the model restored after each."""
    for spec in specs:
        spec = dataclasses.replace(spec, bypass_residual=bool(cfg.cqil.bypass_residual))
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
    calib_base = perplexity(lm.model, calib)

    def rise(spec: CQILSpec) -> float:
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


def latency_ratios(table: dict[str, dict[str, float]], spec: CQILSpec, modes: list[str], num_layers: int) -> dict[str, float]:
    """CQIL / original decode and prefill time per mode, each against the baseline timed like it,
    beside the ideal ratio they aim at."""
    values = {"ideal_latency_ratio": spec.ideal_latency_ratio(num_layers)}
    for mode in modes:
        entry = table.get(f"{spec.name}/{mode}")
        ref = table[baseline_key(mode)]
        if entry is not None:
            values[f"{mode}_latency_ratio"] = entry["decode_s"] / ref["decode_s"]
            values[f"{mode}_prefill_latency_ratio"] = entry["prefill_s"] / ref["prefill_s"]
            if "max_logit_gap_vs_sequential" in entry:
                values[f"{mode}_max_logit_gap"] = entry["max_logit_gap_vs_sequential"]
    return values


def measure_latency(cfg: DictConfig, ctx: RunContext, lm, num_layers: int, results: Results) -> None:
    """Time the original and each `cqil.latency.settings` entry in every mode in one run, so all ratios
    share the machine's load; the raw timings go to latency.json."""
    lat = cfg.cqil.latency
    lat_specs = parse_settings(lat.settings)
    table = latency_table(cfg, lm, lat_specs, list(lat.modes))
    ctx.write_artifact("latency.json", json.dumps(table, indent=1))
    for spec in lat_specs:
        results.add(spec.name, "latency", latency_ratios(table, spec, list(lat.modes), num_layers), **spec_factors(spec))


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
    if cfg.cqil.mode == "distributed":
        return run_distributed(cfg, ctx)
    check_latency_config(cfg)
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
    cfg = OmegaConf.create(cfg_dict)
    lm = load_model(cfg)
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
    if init_from_env():
        import torch.distributed as dist

        return distributed_scores(container, dist.get_rank(), dist.get_world_size())
    return spawn(
        functools.partial(distributed_scores, container),
        world_size=int(cfg.cqil.world_size),
        threads=int(cfg.cqil.threads_per_rank),
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
    lat_rows = sorted(
        {
            k.split("/")[0]
            for k in metrics
            if k.endswith(("/sequential_latency_ratio", "/fused_latency_ratio", "/distributed_latency_ratio"))
        }
    )
    if lat_rows:
        lat_header = ["latency setting (CQIL / original, decode per token)", "ideal", "sequential", "fused", "distributed"]
        metric_names = ["ideal_latency_ratio", "sequential_latency_ratio", "fused_latency_ratio", "distributed_latency_ratio"]

        def cell(s: str, m: str) -> str:
            return f"{metrics[f'{s}/{m}']:.3f}" if f"{s}/{m}" in metrics else "–"

        blocks += ["", markdown_table(lat_header, [[s, *(cell(s, m) for m in metric_names)] for s in lat_rows])]
    blocks += [f"\n{key} = {metrics[key]:.4g}" for key in sorted(k for k in metrics if k.startswith("rule_"))]
    return "\n".join(blocks)
