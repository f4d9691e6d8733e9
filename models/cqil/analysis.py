"""Layer-similarity analysis, the (S, E) proposal rule, and the layer-removal baseline.

CQIL's premise (paper Sec. 3.1, Fig. 2): the inputs of adjacent layers are nearly identical (cosine
similarity close to 1), so adjacent layers can read the same input. Input similarity alone does not
predict what grouping does to the output (grouping the top layers of SmolLM2 ruins it although
their inputs are similar), so the proposal rule checks perplexity on calibration windows too.
The removal baseline is ShortGPT's (Men et al. 2024): drop the layers with the lowest Block
Influence BI_i = 1 - cos(input_i, output_i).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from common.errors import UserError
from models.cqil.plugin import CQILSpec, decoder_of


@torch.no_grad()
def layer_inputs_similarity(model: nn.Module, windows: Tensor) -> Tensor:
    """(L+1, L+1) mean per-token cosine similarity between the inputs of layers 0..L-1 and the last
    layer's output (index L), averaged over the calibration windows."""
    layers = decoder_of(model).layers
    captured: list[Tensor] = []
    hooks = [
        layer.register_forward_pre_hook(
            lambda m, args, kw: captured.append((args[0] if args else kw["hidden_states"]).detach()), with_kwargs=True
        )
        for layer in layers
    ]
    hooks.append(
        layers[-1].register_forward_hook(lambda m, a, out: captured.append((out[0] if isinstance(out, tuple) else out).detach()))
    )
    total = None
    try:
        for window in windows:
            captured.clear()
            model(window.view(1, -1), use_cache=False)
            states = torch.nn.functional.normalize(torch.stack([c[0].float() for c in captured]), dim=-1)  # (L+1, T, H)
            sim = torch.einsum("ath,bth->ab", states, states) / states.size(1)
            total = sim if total is None else total + sim
    finally:
        for hook in hooks:
            hook.remove()
    return total / len(windows)


def block_influence(similarity: Tensor) -> Tensor:
    """ShortGPT's BI_i = 1 - cos(input of layer i, its output) for i = 0..L-1."""
    return 1.0 - torch.diagonal(similarity, offset=1)


def heatmap_figure(similarity: Tensor, title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    image = ax.imshow(similarity.numpy(), vmin=float(similarity.min()), vmax=1.0, cmap="viridis", origin="lower")
    ax.set_xlabel("layer input index (L = final output)")
    ax.set_ylabel("layer input index")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="mean cosine similarity")
    return fig


@dataclass(frozen=True)
class Proposal:
    start: int
    end: int
    min_similarity: float
    ppl_rise: float
    evaluated: int


def propose_region(
    similarity: Tensor,
    parallel_degree: int,
    similarity_bound: float,
    max_ppl_rise: float,
    ppl_rise_of: Callable[[CQILSpec], float],
    max_evaluations: int = 8,
    min_width: int | None = None,
) -> Proposal | None:
    """The widest window (S, E) for P whose every group has pairwise member-input similarity >=
    `similarity_bound` AND whose measured relative perplexity rise (`ppl_rise_of`) is <= `max_ppl_rise`.

    Each perplexity check costs a pass over the calibration windows, so the search assumes that a window
    containing another degrades at least as much (held on every window measured on SmolLM2: (26, 28)
    +1.8 % < (24, 28) +11.6 % < (20, 28) +20 % < ...). For each end E, latest first, it binary-searches the
    start among the windows that pass the similarity bound: a failing narrowest window rules out the whole
    end in one check (as E = L does), a passing one is widened in O(log) checks. At most
    `max_evaluations` checks in all. None = nothing passes."""
    if parallel_degree < 2:
        raise UserError(f"parallel_degree={parallel_degree}: must be >= 2")
    num_layers = similarity.size(0) - 1
    min_width = parallel_degree if min_width is None else min_width
    by_end: dict[int, list[tuple[int, float, CQILSpec]]] = {}
    for start in range(num_layers):
        for end in range(start + parallel_degree, num_layers + 1, parallel_degree):
            if end - start < min_width:
                continue
            spec = CQILSpec(start, end, parallel_degree)
            worst = min(float(similarity[a, b]) for g in spec.groups() for a in g for b in g)
            if worst >= similarity_bound:
                by_end.setdefault(end, []).append((end - start, worst, spec))
    best: Proposal | None = None
    evaluated = 0
    for end in sorted(by_end, reverse=True):
        windows = sorted(by_end[end], key=lambda c: c[0])  # narrow -> wide: each contains the previous
        if best is not None:
            windows = [w for w in windows if w[0] > best.end - best.start]  # only a wider window can do better
        if not windows or evaluated >= max_evaluations:
            continue
        width, worst, spec = windows[0]  # the narrowest first: if it fails, every window ending here fails
        rise = ppl_rise_of(spec)
        evaluated += 1
        if rise > max_ppl_rise:
            continue
        if best is None or width > best.end - best.start:
            best = Proposal(spec.start, spec.end, worst, rise, evaluated)
        low, high = 1, len(windows) - 1
        while low <= high and evaluated < max_evaluations:
            middle = (low + high) // 2
            width, worst, spec = windows[middle]
            rise = ppl_rise_of(spec)
            evaluated += 1
            if rise <= max_ppl_rise:
                best = Proposal(spec.start, spec.end, worst, rise, evaluated)
                low = middle + 1
            else:
                high = middle - 1
    if best is not None:
        best = Proposal(best.start, best.end, best.min_similarity, best.ppl_rise, evaluated)
    return best


def layers_to_remove(similarity: Tensor, count: int, keep_first: int = 1) -> list[int]:
    """The `count` layers with the lowest Block Influence (layer 0 kept: it also sets the cache length)."""
    bi = block_influence(similarity)
    order = [int(i) for i in torch.argsort(bi) if int(i) >= keep_first]
    if count > len(order):
        raise UserError(f"cannot remove {count} layers from a {len(bi)}-layer model")
    return sorted(order[:count])


def remove_layers(model: nn.Module, indices: Sequence[int]) -> None:
    """Drop layers in place (undo with `restore_layers`); kept attentions get consecutive cache indices."""
    decoder = decoder_of(model)
    if hasattr(decoder, "_removed_original_layers"):
        raise UserError("layers are already removed; call restore_layers first")
    layers = decoder.layers
    drop = set(int(i) for i in indices)
    types = getattr(getattr(model, "config", None), "layer_types", None) or []
    if len(set(types)) > 1:  # the decoder hands slot i the mask of layer_types[i]; removal shifts the slots
        raise UserError(
            f"layer removal on a model mixing attention types {sorted(set(types))} (config.layer_types) is not "
            "supported; set cqil.removal=false and cqil.recovery.removal=false"
        )
    kept = [layer for i, layer in enumerate(layers) if i not in drop]
    original_idx = [layer.self_attn.layer_idx for layer in layers]
    for new, layer in enumerate(kept):
        layer.self_attn.layer_idx = new
    object.__setattr__(decoder, "_removed_original_layers", (layers, original_idx))
    decoder.layers = nn.ModuleList(kept)


def restore_layers(model: nn.Module) -> None:
    decoder = decoder_of(model)
    layers, original_idx = decoder._removed_original_layers
    for layer, idx in zip(layers, original_idx):
        layer.self_attn.layer_idx = idx
    decoder.layers = layers
    object.__delattr__(decoder, "_removed_original_layers")
