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

import functools
import json
import logging
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from common.errors import UserError
from data.text_corpus import corpus_windows
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
            apply_cqil(lm.model, spec.start, spec.end, spec.parallel_degree, spec.bypass_distance, mode=mode)
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
            apply_cqil(lm.model, spec.start, spec.end, spec.parallel_degree, spec.bypass_distance, mode="sequential")
            sequential = lm.model(prompt).logits
            remove_cqil(lm.model)
            apply_cqil(lm.model, spec.start, spec.end, spec.parallel_degree, spec.bypass_distance, mode="distributed")
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


def distributed_scores(cfg_dict: dict, rank: int, world: int) -> dict[str, Any]:
    """On every rank: score the original, then each setting in sequential mode and in distributed
    mode (same windows, same prompts); rank 0's result is the task's."""
    cfg = OmegaConf.create(cfg_dict)
    torch.manual_seed(int(cfg.seed))
    lm = instantiate(cfg.model.loader)
    num_layers = len(decoder_of(lm.model).layers)
    scorer = Scorer(cfg, lm)
    metrics: dict[str, float] = {f"original/{k}": v for k, v in scorer.score().items()}
    records = []
    for spec in parse_settings(cfg.cqil.settings):
        apply_cqil(lm.model, spec.start, spec.end, spec.parallel_degree, spec.bypass_distance, mode="sequential")
        sequential = scorer.score(greedy=False)
        remove_cqil(lm.model)
        apply_cqil(lm.model, spec.start, spec.end, spec.parallel_degree, spec.bypass_distance, mode="distributed")
        try:
            values = scorer.score()
        finally:
            remove_cqil(lm.model)
        for key, value in sequential.items():
            values[f"sequential_{key}"] = value
        values["ideal_latency_ratio"] = spec.ideal_latency_ratio(num_layers)
        values["world_size"] = float(world)
        metrics.update({f"{spec.name}/{k}": v for k, v in values.items()})
        records.append(
            {
                "setting": spec.name,
                "kind": "cqil_distributed",
                "p": spec.parallel_degree,
                "s": spec.start,
                "e": spec.end,
                "d": spec.bypass_distance,
                **values,
            }
        )
    return {"metrics": metrics, "records": records}


def run_distributed(cfg: DictConfig, ctx: RunContext) -> TaskResult:
    """`cqil.mode=distributed`: under torchrun every rank runs this job (rank 0 writes); from plain
    `run.py`, `cqil.world_size` processes are spawned (gloo on CPU, NCCL with enough GPUs)."""
    from models.cqil.distributed import init_from_env, spawn

    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    if init_from_env():
        import torch.distributed as dist

        out = distributed_scores(container, dist.get_rank(), dist.get_world_size())
    else:
        out = spawn(
            functools.partial(distributed_scores, container),
            world_size=int(cfg.cqil.world_size),
            threads=int(cfg.cqil.threads_per_rank),
        )
    metrics = out["metrics"]
    corpora = [k.split("/")[1][: -len("_ppl")] for k in metrics if k.startswith("original/") and k.endswith("_ppl")]
    specs = parse_settings(cfg.cqil.settings)
    lines = ["| setting | corpus | sequential ppl | distributed ppl | greedy agreement (distributed) |", "|---|---|---|---|---|"]
    for spec in specs:
        for corpus in corpora:
            lines.append(
                f"| {spec.name} | {corpus} | {metrics[f'{spec.name}/sequential_{corpus}_ppl']:.4f} | "
                f"{metrics[f'{spec.name}/{corpus}_ppl']:.4f} | {metrics[f'{spec.name}/greedy_agreement']:.3f} |"
            )
    return TaskResult(metrics=metrics, table="\n".join(lines), records=out["records"])


def run(cfg: DictConfig, ctx: RunContext) -> TaskResult:
    if cfg.cqil.mode == "distributed":
        return run_distributed(cfg, ctx)
    torch.manual_seed(int(cfg.seed))
    if cfg.cqil.latency.enabled:
        check_latency_modes(list(cfg.cqil.latency.modes))  # before the model loads and the grid runs
    lm = instantiate(cfg.model.loader)
    num_layers = len(decoder_of(lm.model).layers)
    specs = parse_settings(cfg.cqil.settings)
    scorer = Scorer(cfg, lm)
    metrics: dict[str, float] = {}
    records: list[dict[str, Any]] = []

    def add(setting: str, kind: str, values: dict[str, float], **factors: Any) -> None:
        metrics.update({f"{setting}/{k}": v for k, v in values.items()})
        records.append({"setting": setting, "kind": kind, **factors, **values})

    add("original", "original", {**scorer.score(), "ideal_latency_ratio": 1.0})
    base = {k.split("/")[1]: v for k, v in metrics.items() if k.startswith("original/") and k.endswith("_ppl")}

    # similarity analysis (calibration windows) -> heat map, removal order, (S, E) rule
    calib = scorer.windows[cfg.cqil.rule.corpus][: ctx.limit(int(cfg.cqil.rule.calibration_windows))]
    similarity = layer_inputs_similarity(lm.model, calib)
    ctx.save_figure(heatmap_figure(similarity, f"{cfg.model.name}: layer-input cosine similarity"), "layer_similarity")
    ctx.write_artifact("layer_similarity.csv", "\n".join(",".join(f"{v:.5f}" for v in row) for row in similarity.tolist()) + "\n")

    for spec in specs:
        validate = CQILSpec(spec.start, spec.end, spec.parallel_degree, spec.bypass_distance)
        apply_cqil(
            lm.model,
            spec.start,
            spec.end,
            spec.parallel_degree,
            spec.bypass_distance,
            mode=cfg.cqil.mode,
            bypass_residual=bool(cfg.cqil.bypass_residual),
        )
        try:
            values = scorer.score()
        finally:
            remove_cqil(lm.model)
        values["ideal_latency_ratio"] = validate.ideal_latency_ratio(num_layers)
        add(spec.name, "cqil", values, p=spec.parallel_degree, s=spec.start, e=spec.end, d=spec.bypass_distance)
        log.info("%s: %s", spec.name, values)

    if cfg.cqil.removal:
        for k in sorted({saved_layers(s) for s in specs}):
            remove_layers(lm.model, layers_to_remove(similarity, k))
            try:
                values = scorer.score()
            finally:
                restore_layers(lm.model)
            add(f"removed_{k}", "removed", {**values, "ideal_latency_ratio": 1.0 - k / num_layers}, removed=k)
            log.info("removed_%d: %s", k, values)

    rule = cfg.cqil.rule
    if rule.enabled:
        calib_base = perplexity(lm.model, calib)

        def rise(spec: CQILSpec) -> float:
            apply_cqil(lm.model, spec.start, spec.end, spec.parallel_degree)
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
            metrics[f"{key}/found"] = 0.0
        else:
            metrics.update(
                {
                    f"{key}/found": 1.0,
                    f"{key}/start": proposal.start,
                    f"{key}/end": proposal.end,
                    f"{key}/calibration_ppl_rise": proposal.ppl_rise,
                    f"{key}/min_similarity": proposal.min_similarity,
                    f"{key}/evaluations": proposal.evaluated,
                }
            )

    lat = cfg.cqil.latency
    if lat.enabled:
        lat_specs = parse_settings(lat.settings)
        table = latency_table(cfg, lm, lat_specs, list(lat.modes))
        ctx.write_artifact("latency.json", json.dumps(table, indent=1))
        for spec in lat_specs:
            values = {"ideal_latency_ratio": spec.ideal_latency_ratio(num_layers)}
            for mode in lat.modes:
                entry = table.get(f"{spec.name}/{mode}")
                ref = table[baseline_key(mode)]
                if entry is not None:
                    values[f"{mode}_latency_ratio"] = entry["decode_s"] / ref["decode_s"]
                    values[f"{mode}_prefill_latency_ratio"] = entry["prefill_s"] / ref["prefill_s"]
                    if "max_logit_gap_vs_sequential" in entry:
                        values[f"{mode}_max_logit_gap"] = entry["max_logit_gap_vs_sequential"]
            metrics.update({f"{spec.name}/{k}": v for k, v in values.items()})
            records.append(
                {
                    "setting": spec.name,
                    "kind": "latency",
                    "p": spec.parallel_degree,
                    "s": spec.start,
                    "e": spec.end,
                    "d": spec.bypass_distance,
                    **values,
                }
            )

    if cfg.cqil.recovery.enabled:
        for setting, values, factors in recover_and_score(cfg, ctx, lm, scorer, similarity):
            add(setting, factors.pop("kind"), values, **factors)

    return TaskResult(metrics=metrics, table=results_table(metrics, base, specs, list(scorer.windows)), records=records)


def results_table(metrics: dict[str, float], base: dict[str, float], specs: list[CQILSpec], corpora: list[str]) -> str:
    """Markdown: every setting's perplexities (and rise vs the original), agreement, ideal latency,
    with the removal baseline at equal ideal latency beside each CQIL setting."""
    head = "| setting | " + " | ".join(f"{c} ppl (rise)" for c in corpora) + " | greedy agreement | ideal latency |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    settings = ["original"]
    for spec in specs:
        settings += [spec.name, f"removed_{saved_layers(spec)}"]
    settings += sorted({k.split("/")[0] for k in metrics if k.endswith("_lora/greedy_agreement")})
    seen = set()
    for s in settings:
        if s in seen or f"{s}/greedy_agreement" not in metrics:
            continue
        seen.add(s)
        cells = []
        for c in corpora:
            v = metrics.get(f"{s}/{c}_ppl")
            cells.append("–" if v is None else f"{v:.2f} ({100 * (v / base[f'{c}_ppl'] - 1):+.1f} %)")
        lines.append(
            f"| {s} | " + " | ".join(cells) + f" | {metrics[f'{s}/greedy_agreement']:.3f} | "
            f"{metrics.get(f'{s}/ideal_latency_ratio', float('nan')):.3f} |"
        )
    lat_rows = sorted(
        {
            k.split("/")[0]
            for k in metrics
            if k.endswith(("/sequential_latency_ratio", "/fused_latency_ratio", "/distributed_latency_ratio"))
        }
    )
    if lat_rows:
        lines += [
            "",
            "| latency setting (CQIL / original, decode per token) | ideal | sequential | fused | distributed |",
            "|---|---|---|---|---|",
        ]
        for s in lat_rows:

            def cell(m: str, s: str = s) -> str:
                return f"{metrics[f'{s}/{m}']:.3f}" if f"{s}/{m}" in metrics else "–"

            lines.append(
                f"| {s} | {cell('ideal_latency_ratio')} | {cell('sequential_latency_ratio')} | "
                f"{cell('fused_latency_ratio')} | {cell('distributed_latency_ratio')} |"
            )
    for key in sorted(k for k in metrics if k.startswith("rule_")):
        lines.append(f"\n{key} = {metrics[key]:.4g}")
    return "\n".join(lines)
