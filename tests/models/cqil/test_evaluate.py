"""Timing helpers: the layer-time share that turns the layer-time ideal into a whole-model one."""

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
