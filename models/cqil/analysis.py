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
    max_evaluations: int = 6,
    min_width: int | None = None,
) -> Proposal | None:
    """The widest window (S, E) for P whose every group has pairwise member-input similarity >=
    `similarity_bound` AND whose measured relative perplexity rise (`ppl_rise_of`) is <= `max_ppl_rise`.

    Candidates go widest first, most similar first within a width; at most `max_evaluations`
    perplexity checks are made (each costs a pass over the calibration windows). None = nothing passes."""
    if parallel_degree < 2:
        raise UserError(f"parallel_degree={parallel_degree}: must be >= 2")
    num_layers = similarity.size(0) - 1
    candidates = []
    for start in range(num_layers):
        for end in range(start + parallel_degree, num_layers + 1, parallel_degree):
            spec = CQILSpec(start, end, parallel_degree)
            worst = min(float(similarity[a, b]) for g in spec.groups() for a in g for b in g)
            if worst >= similarity_bound:
                candidates.append((end - start, worst, spec))
    candidates.sort(key=lambda c: (-c[0], -c[1]))
    min_width = parallel_degree if min_width is None else min_width
    evaluated = 0
    for width, worst, spec in candidates:
        if width < min_width or evaluated >= max_evaluations:
            break
        rise = ppl_rise_of(spec)
        evaluated += 1
        if rise <= max_ppl_rise:
            return Proposal(spec.start, spec.end, worst, rise, evaluated)
    return None


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
