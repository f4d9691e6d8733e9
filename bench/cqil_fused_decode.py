"""Fused-mode decode at long context: per-member attention on the cache vs stacking the cached K/V each step.

    python bench/cqil_fused_decode.py [--context 2048 --decode 4 --repeats 11 --warmup 1]
                                      [--start 4 --end 28 --p 2] [--group-repeats 101] [--threads 1 2]
                                      [--out results/cqil/fused_decode]

Model: SmolLM2-135M's shape (hidden 576, 9 heads / 3 kv heads, 30 layers, intermediate 1536, vocab 49152,
tied embeddings) with RANDOM weights built from a LlamaConfig (no download): only timings are read off it.
Settings, each prefilled once with `--context` random tokens into its own DynamicCache (SDPA attention;
`fused_concat` decodes from a copy of `fused`'s, the same prefill):
`original` (the unmodified layers), CQIL `sequential`, `fused_concat` (fused with
`FusedGroup.stacked_cache_concat = True`: the members' cached K/V concatenated every decode step, the
former path) and `fused` (the default: each member attends to its own cache layer in place).
The whole-model figures include the embeddings, the LM head and the DynamicCache's own per-layer append
(a copy of each layer's K/V every step, in every setting), so the saving is also timed on its own: one
fused group's decode step on a `--context` cache, both paths interleaved call by call (`--group-repeats`).
Decode = seconds per greedy token over `--decode` steps, the cache cropped back to `--context` before each
run; the settings run interleaved run by run (a busy machine slows all alike), medians of `--repeats` after
`--warmup`, once per thread count; ratios are against `original` measured in the same run and thread count
(ratios of medians; fused / fused_concat also as the median of the per-run ratios, the runs of the two
settings being back to back).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from experiments.analysis.tables import markdown_table  # noqa: E402
from models.cqil.fused import FusedGroup  # noqa: E402
from models.cqil.plugin import CQILSpec, apply_cqil, decoder_of, remove_cqil  # noqa: E402

SETTINGS = ("original", "sequential", "fused_concat", "fused")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--decode", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--start", type=int, default=4)
    parser.add_argument("--end", type=int, default=28)
    parser.add_argument("--p", type=int, default=2)
    parser.add_argument("--group-repeats", type=int, default=101)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--out", type=Path)
    return parser.parse_args()


def smollm2_shaped(context: int) -> LlamaForCausalLM:
    """SmolLM2-135M's architecture with random (HF-initialised) weights, float32, SDPA attention."""
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=max(8192, context + 64),
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def layer_lists(model: nn.Module, spec: CQILSpec) -> dict[str, nn.ModuleList]:
    """The decoder's layer list per setting; the CQIL lists share the original layers (fused ones hold copies)."""
    lists = {"original": decoder_of(model).layers}
    for name, mode in (("sequential", "sequential"), ("fused_concat", "fused"), ("fused", "fused")):
        apply_cqil(model, spec, mode=mode)
        lists[name] = decoder_of(model).layers
        remove_cqil(model)
    for group in lists["fused_concat"]:
        if isinstance(group, FusedGroup):
            group.stacked_cache_concat = True  # instance attribute: the `fused` list keeps the class default
    return lists


@torch.no_grad()
def decode_seconds(model: nn.Module, cache: DynamicCache, token: Tensor, context: int, steps: int) -> tuple[float, Tensor]:
    """Seconds per greedy token over `steps` steps from `context` cached tokens, and the first step's logits."""
    extra = cache.get_seq_length() - context
    if extra > 0:
        cache.crop(-extra)  # back to the prefilled context (views of the cached tensors, no copy)
    start = time.perf_counter()
    first = None
    for _ in range(steps):
        logits = model(token, past_key_values=cache, use_cache=True).logits[:, -1]
        first = logits if first is None else first
        token = logits.argmax(-1, keepdim=True)
    return (time.perf_counter() - start) / steps, first


@torch.no_grad()
def prefill_caches(model: nn.Module, lists: dict[str, nn.ModuleList], prompt: Tensor) -> dict[str, DynamicCache]:
    """Each setting's own prefill (its cache holds its own K/V); `fused_concat` gets a copy of `fused`'s,
    the same computation (the flag changes decode only)."""
    decoder = decoder_of(model)
    caches = {}
    for name in SETTINGS:
        if name == "fused_concat":
            continue
        decoder.layers = lists[name]
        start = time.perf_counter()
        caches[name] = DynamicCache(config=model.config)
        model(prompt, past_key_values=caches[name], use_cache=True, logits_to_keep=1)
        print(f"prefill {name}: {time.perf_counter() - start:.1f} s", flush=True)
    caches["fused_concat"] = copy.deepcopy(caches["fused"])
    return caches


@torch.no_grad()
def group_step_seconds(
    model: nn.Module, group: FusedGroup, cache: DynamicCache, context: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds of one fused group's decode step (one token after `context` cached ones), the concatenating
    and the in-place path alternating call by call; the group's cache layers are cropped back each call."""
    hidden = torch.randn(1, 1, model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    position = decoder_of(model).rotary_emb(hidden, torch.tensor([[context]]))
    runs: dict[str, list[float]] = {"fused_concat": [], "fused": []}
    try:
        for _ in range(repeats):
            for name in runs:
                group.stacked_cache_concat = name == "fused_concat"
                for idx in group.layer_indices:
                    layer = cache.layers[idx]
                    if layer.keys.shape[-2] > context:
                        layer.crop(context - layer.keys.shape[-2])
                start = time.perf_counter()
                group(hidden, attention_mask=None, position_embeddings=position, past_key_values=cache)
                runs[name].append(time.perf_counter() - start)
    finally:
        del group.stacked_cache_concat  # back to the class default
    return runs


def main() -> None:
    args = parse_args()
    model = smollm2_shaped(args.context)
    spec = CQILSpec(args.start, args.end, args.p)
    lists = layer_lists(model, spec)
    decoder = decoder_of(model)
    original = decoder.layers
    prompt = torch.randint(0, model.config.vocab_size, (1, args.context), generator=torch.Generator().manual_seed(1))
    token = torch.tensor([[7]])
    groups = [m for m in lists["fused"] if isinstance(m, FusedGroup)]
    group, n_groups = groups[0], len(groups)
    ctx = f"ctx{args.context}"
    metrics: dict[str, float | int | str] = {
        "config/model": "SmolLM2-135M shape, random weights",
        "config/setting": spec.name,
        "config/context": args.context,
        "config/decode_steps": args.decode,
        "config/repeats": args.repeats,
        "config/warmup": args.warmup,
        "config/group_repeats": args.group_repeats,
        "config/cpu_count": os.cpu_count() or 0,
        "config/torch": torch.__version__,
        "config/machine": platform.processor() or platform.machine(),
    }
    rows, group_rows = [], []
    first_logits: dict[str, Tensor] = {}
    try:
        torch.set_num_threads(max(args.threads))
        caches = prefill_caches(model, lists, prompt)
        group_cache = copy.deepcopy(caches["fused"])
        for threads in args.threads:
            torch.set_num_threads(threads)
            metrics[f"config/load_average_before_threads{threads}"] = os.getloadavg()[0]
            runs: dict[str, list[float]] = {name: [] for name in SETTINGS}
            for run in range(args.warmup + args.repeats):
                for name in SETTINGS:
                    decoder.layers = lists[name]
                    seconds, logits = decode_seconds(model, caches[name], token, args.context, args.decode)
                    first_logits.setdefault(name, logits)
                    if run >= args.warmup:
                        runs[name].append(seconds)
            ms = {name: 1000 * statistics.median(values) for name, values in runs.items()}
            for name in SETTINGS:
                key = f"{name}_threads{threads}"
                metrics[f"{key}/decode_ms_per_token_{ctx}"] = ms[name]
                metrics[f"{key}/decode_ratio_vs_original"] = ms[name] / ms["original"]
                spread = 1000 * (max(runs[name]) - min(runs[name]))
                rows.append([threads, name, f"{ms[name]:.1f}", f"{spread:.1f}", f"{ms[name] / ms['original']:.3f}"])
            paired = statistics.median(a / b for a, b in zip(runs["fused"], runs["fused_concat"], strict=True))
            metrics[f"fused_threads{threads}/decode_ratio_vs_fused_concat"] = ms["fused"] / ms["fused_concat"]
            metrics[f"fused_threads{threads}/decode_ratio_vs_fused_concat_paired_median"] = paired
            print(f"threads {threads}: " + ", ".join(f"{n} {ms[n]:.1f} ms" for n in SETTINGS), flush=True)

            steps = group_step_seconds(model, group, group_cache, args.context, args.group_repeats + 1)
            step_ms = {name: 1000 * statistics.median(values[1:]) for name, values in steps.items()}
            for name, value in step_ms.items():
                metrics[f"group_step_{name}_threads{threads}/ms_{ctx}"] = value
            metrics[f"group_step_threads{threads}/fused_ratio_vs_fused_concat"] = step_ms["fused"] / step_ms["fused_concat"]
            saved = (step_ms["fused_concat"] - step_ms["fused"]) * n_groups
            metrics[f"group_step_threads{threads}/saved_ms_per_token_all_groups"] = saved
            group_rows.append(
                [
                    threads,
                    f"{step_ms['fused_concat']:.3f}",
                    f"{step_ms['fused']:.3f}",
                    f"{step_ms['fused'] / step_ms['fused_concat']:.3f}",
                    f"{saved:.1f}",
                    f"{saved / ms['fused_concat']:.1%}",
                ]
            )
    finally:
        decoder.layers = original
    for name in ("fused_concat", "fused"):  # the same cache values and token: the paths must agree
        diff = float((first_logits[name] - first_logits["sequential"]).abs().max())
        metrics[f"check/{name}_vs_sequential_max_abs_logit_diff"] = diff
        print(f"{name} vs sequential, first decoded token: max |logit difference| {diff:.2e}")
    header = ["threads", "setting", f"decode ms/token (ctx {args.context})", "max - min over repeats (ms)", "ratio vs original"]
    group_header = [
        "threads",
        f"one fused group's decode step, concatenating (ms, ctx {args.context})",
        "in place (ms)",
        "ratio",
        f"saved per token, x {n_groups} groups (ms)",
        "share of fused_concat's token time",
    ]
    text = markdown_table(header, rows) + "\n\n" + markdown_table(group_header, group_rows) + "\n"
    print(text)
    for threads in args.threads:
        key = f"fused_threads{threads}/decode_ratio_vs_fused_concat"
        print(
            f"threads {threads}: fused / fused_concat = {metrics[key]:.3f} (median of per-run ratios {metrics[key + '_paired_median']:.3f})"
        )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.md").write_text(text)
        (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")


if __name__ == "__main__":
    main()
