"""Distributed mode with 2 gloo processes equals sequential mode (logits and KV-cache generation)."""

from __future__ import annotations

import functools

import pytest
import torch

from common.errors import UserError
from models.cqil.distributed import spawn
from models.cqil.plugin import CQILSpec, apply_cqil, remove_cqil
from models.cqil.shm import shared_memory_supported
from tests.models.cqil.tiny import distributed_job, make_tiny

needs_x86 = pytest.mark.skipif(not shared_memory_supported(), reason="shared-memory collectives rely on x86-64 store ordering")


@pytest.mark.parametrize(
    "start,end,p,d,comm",
    [
        (1, 3, 2, 0, "dist"),
        pytest.param(1, 3, 2, 0, "shm", marks=[needs_x86, pytest.mark.slow]),
        pytest.param(1, 4, 3, 1, "dist", marks=pytest.mark.slow),
    ],
)
def test_two_gloo_ranks_equal_sequential(start, end, p, d, comm):
    """Over gloo, or with the per-token collectives in shared memory: the same logits and tokens."""
    ids = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(3))
    got = spawn(functools.partial(distributed_job, ids, CQILSpec(start, end, p, d)), world_size=2, backend="gloo", comm=comm)
    model = make_tiny()
    apply_cqil(model, CQILSpec(start, end, p, d), mode="sequential")
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
        apply_cqil(make_tiny(), CQILSpec(1, 3, 2), mode="distributed")
    with pytest.raises(UserError, match="world_size"):
        spawn(print, world_size=1)


def _collective_job(rank: int, world: int) -> dict:
    from models.cqil.shm import collectives

    comm = collectives()
    sums = [comm.all_reduce_(torch.full((3, 5), float(rank + 1) * (step + 1))).clone() for step in range(50)]
    sent = comm.broadcast_(torch.arange(6.0).view(2, 3) + 10 * rank, src=1).clone()
    too_big = None
    try:
        comm.all_reduce_(torch.zeros(65))
    except UserError as error:
        too_big = str(error)
    return {"sums": sums, "sent": sent, "too_big": too_big}


@needs_x86
def test_shared_memory_collectives_sum_and_broadcast_across_processes(tmp_path, monkeypatch):
    """50 back-to-back all-reduces (the two buffers alternate), a broadcast from rank 1, a capacity error,
    and no file left in the shared-memory dir."""
    monkeypatch.setenv("FIVEFOLD_SHM_DIR", str(tmp_path))
    got = spawn(_collective_job, world_size=2, backend="gloo", comm="shm", shm_capacity=64)
    for step, total in enumerate(got["sums"]):
        assert torch.equal(total, torch.full((3, 5), 3.0 * (step + 1)))
    assert torch.equal(got["sent"], torch.arange(6.0).view(2, 3) + 10)
    assert "exceeds its capacity 64" in got["too_big"]
    assert not list(tmp_path.iterdir())
