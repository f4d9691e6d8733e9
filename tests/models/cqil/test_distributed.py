"""Distributed mode with 2 gloo processes equals sequential mode (logits and KV-cache generation)."""

from __future__ import annotations

import functools

import pytest
import torch

from common.errors import UserError
from models.cqil.distributed import spawn
from models.cqil.plugin import apply_cqil, remove_cqil
from tests.models.cqil.tiny import distributed_job, make_tiny


@pytest.mark.parametrize("start,end,p,d", [(1, 3, 2, 0), pytest.param(1, 4, 3, 1, marks=pytest.mark.slow)])
def test_two_gloo_ranks_equal_sequential(start, end, p, d):
    ids = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(3))
    got = spawn(functools.partial(distributed_job, ids, start, end, p, d), world_size=2, backend="gloo")
    model = make_tiny()
    apply_cqil(model, start, end, p, d, mode="sequential")
    with torch.no_grad():
        want = model(ids).logits
        generated = model.generate(
            ids[:1], attention_mask=torch.ones_like(ids[:1]), max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0
        )
    remove_cqil(model)
    assert got["world"] == 2 and got["rank"] == 0
    assert torch.allclose(got["logits"], want, atol=1e-5)
    assert torch.equal(got["generated"], generated)
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, want, atol=1e-3)  # the region really changed the model


def test_distributed_needs_a_process_group():
    with pytest.raises(UserError, match="torch.distributed"):
        apply_cqil(make_tiny(), 1, 3, 2, mode="distributed")
    with pytest.raises(UserError, match="world_size"):
        spawn(print, world_size=1)
