"""Evaluation of a (CQIL / layer-removed / original) causal LM: perplexity, greedy agreement, latency.

Latency follows the paper's protocol adapted to CPU (Sec. 5.3): warm-up runs, then `repeats`
timed runs, median; prefill = one forward over the prompt, decode = per-token time of single-token
forwards with the KV cache after that prefill. On a GPU the clock is read after a synchronize, so
queued kernels count.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn


def model_device(model: nn.Module) -> torch.device:
    """Where the model's weights are: inputs go there (a distributed rank's model may sit on its GPU)."""
    return next(model.parameters()).device


@torch.no_grad()
def perplexity(model: nn.Module, windows: Tensor, batch_size: int = 1) -> float:
    """exp(mean next-token NLL) over every predicted position of every window."""
    total, count = 0.0, 0
    device = model_device(model)
    for i in range(0, len(windows), batch_size):
        batch = windows[i : i + batch_size].to(device)
        logits = model(batch, use_cache=False).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum")
        total += float(nll)
        count += batch[:, 1:].numel()
    return math.exp(total / count)


@torch.no_grad()
def greedy_tokens(model: nn.Module, prompts: Sequence[Tensor], new_tokens: int) -> list[list[int]]:
    """Greedy continuations with HF `generate` (KV cache on), exactly `new_tokens` each (no early EOS)."""
    out = []
    for prompt in prompts:
        ids = prompt.view(1, -1).to(model_device(model))
        generated = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
        out.append(generated[0, ids.size(1) :].tolist())
    return out


def agreement(reference: Sequence[Sequence[int]], candidate: Sequence[Sequence[int]]) -> float:
    """Fraction of generated positions where the candidate's greedy token equals the reference's."""
    same = sum(a == b for ref, cand in zip(reference, candidate) for a, b in zip(ref, cand))
    return same / max(1, sum(len(r) for r in reference))


def _greedy_decode(model: nn.Module, out, steps: int) -> None:
    """`steps` greedy tokens with the KV cache, continuing from a forward pass's output."""
    cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    for _ in range(steps):
        out = model(token, past_key_values=cache, use_cache=True)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)


def _clock(device: torch.device) -> float:
    """perf_counter once the device has finished its queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@torch.no_grad()
def time_prefill_decode(model: nn.Module, prompt: Tensor, decode_steps: int, repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds of a prefill over `prompt` (1, T) and median seconds per decoded token."""
    device = prompt.device
    prefill, decode = [], []
    for run in range(warmup + repeats):
        start = _clock(device)
        out = model(prompt, use_cache=True)
        mid = _clock(device)
        _greedy_decode(model, out, decode_steps)
        end = _clock(device)
        if run >= warmup:
            prefill.append(mid - start)
            decode.append((end - mid) / max(1, decode_steps))
    return {"prefill_s": statistics.median(prefill), "decode_s": statistics.median(decode)}


@torch.no_grad()
def layer_time_share(model: nn.Module, prompt: Tensor, decode_steps: int, repeats: int = 3) -> dict[str, float]:
    """Share of decode (and prefill) time spent inside the decoder layers of the unmodified model.

    CQIL's ideal reduction (E - S)(1 - 1/P) / L is a share of the *layer* time; embeddings, the final
    norm and the LM head (on SmolLM2-135M a 49k x 576 matmul per token) are not parallelised, so the
    whole-model ideal ratio is 1 - share x (E - S)(1 - 1/P) / L. Timed with hooks around each layer."""
    from models.cqil.plugin import decoder_of

    layers = decoder_of(model).layers
    spent, started = [0.0], [0.0]

    def before(module, args, kwargs):  # noqa: ANN001 - torch hook signature
        started[0] = time.perf_counter()

    def after(module, args, kwargs, output):  # noqa: ANN001
        spent[0] += time.perf_counter() - started[0]

    handles = [layer.register_forward_pre_hook(before, with_kwargs=True) for layer in layers]
    handles += [layer.register_forward_hook(after, with_kwargs=True) for layer in layers]
    shares: dict[str, list[float]] = {"prefill": [], "decode": []}
    try:
        for _ in range(repeats):
            spent[0] = 0.0
            start = time.perf_counter()
            out = model(prompt, use_cache=True)
            shares["prefill"].append(spent[0] / (time.perf_counter() - start))
            spent[0] = 0.0
            start = time.perf_counter()
            _greedy_decode(model, out, decode_steps)
            shares["decode"].append(spent[0] / (time.perf_counter() - start))
    finally:
        for handle in handles:
            handle.remove()
    return {f"layer_share_{k}": statistics.median(v) for k, v in shares.items()}


@torch.no_grad()
def time_variants(
    model: nn.Module,
    variants: dict[str, nn.ModuleList],
    prompt: Tensor,
    decode_steps: int,
    repeats: int,
    warmup: int,
    threads: Mapping[str, int] | None = None,
) -> dict[str, dict[str, float]]:
    """Latency of several layer lists of one model (original, CQIL modes), interleaved run by run so a
    busy machine slows every variant alike; medians per variant. `threads` gives a variant its own
    intra-op thread count (the original on as many cores as CQIL uses, beside the one-thread one);
    each timed run follows its own warm-up, so the switch is not timed. The caller's count is restored."""
    from models.cqil.plugin import decoder_of

    decoder = decoder_of(model)
    original, caller_threads = decoder.layers, torch.get_num_threads()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    try:
        for _ in range(repeats):
            for name, layers in variants.items():
                torch.set_num_threads(int((threads or {}).get(name, caller_threads)))
                decoder.layers = layers
                runs[name].append(time_prefill_decode(model, prompt, decode_steps, 1, warmup))
    finally:
        decoder.layers = original
        torch.set_num_threads(caller_threads)
    return {
        name: {key: statistics.median(r[key] for r in rows) for key in ("prefill_s", "decode_s")} for name, rows in runs.items()
    }
