"""Timing helpers: the layer-time share that turns the layer-time ideal into a whole-model one, and
variants timed on their own thread counts."""

from __future__ import annotations


def test_layer_time_share_is_a_fraction_and_leaves_no_hooks() -> None:
    """The share of time inside the decoder layers (the part CQIL's ideal reduction is a share of)."""
    import torch

    from models.cqil.evaluate import layer_time_share
    from tests.models.cqil.tiny import tiny_llama

    model = tiny_llama().eval()
    share = layer_time_share(model, torch.randint(0, 100, (1, 8)), decode_steps=3, repeats=2)
    assert set(share) == {"layer_share_prefill", "layer_share_decode"}
    assert all(0.0 < value < 1.0 for value in share.values())
    assert not any(layer._forward_hooks or layer._forward_pre_hooks for layer in model.model.layers)


def test_time_variants_runs_each_variant_on_its_threads_and_restores_the_count(monkeypatch) -> None:
    """The same-cores original runs on more intra-op threads than the others, interleaved run by run."""
    import torch

    import models.cqil.evaluate as evaluate
    from tests.models.cqil.tiny import tiny_llama

    seen: list[int] = []

    def timed(*args) -> dict[str, float]:
        seen.append(torch.get_num_threads())
        return {"prefill_s": 1.0, "decode_s": 1.0}

    monkeypatch.setattr(evaluate, "time_prefill_decode", timed)
    model = tiny_llama()
    layers = model.model.layers
    before = torch.get_num_threads()
    evaluate.time_variants(model, {"a": layers, "b": layers}, torch.zeros(1, 2, dtype=torch.long), 1, 2, 0, {"a": 1, "b": 2})
    assert seen == [1, 2, 1, 2]
    assert torch.get_num_threads() == before
