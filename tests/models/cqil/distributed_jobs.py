"""Picklable jobs that `spawn` runs on every rank of the distributed-mode tests.

Each returns rank 0's view, plus what every rank saw where a test checks each rank (gathered with
`all_gather_object`). The tiny model is imported inside the jobs, so the failure jobs start without
loading transformers.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch import nn


def gather(value: object) -> list:
    """`value` from every rank, in rank order."""
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def held_bytes(module: nn.Module) -> int:
    """Bytes of the parameters whose data this process holds (meta tensors hold none)."""
    return sum(p.numel() * p.element_size() for p in module.parameters() if not p.is_meta)


def greedy(model: nn.Module, ids: torch.Tensor, new_tokens: int = 6) -> torch.Tensor:
    return model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
    )


def two_steps(model: nn.Module, ids: torch.Tensor) -> dict:
    """A prefill and one decode step by hand, positions left to the model (no position_ids)."""
    first = model(ids, use_cache=True)
    nxt = first.logits[:, -1:].argmax(-1)
    cache = first.past_key_values
    second = model(nxt, past_key_values=cache, use_cache=True)
    lengths = [cache.get_seq_length(i) for i in range(len(cache.layers))]
    return {"prefill": first.logits, "decode": second.logits, "cache_lengths": lengths}


def start_zero_job(ids: torch.Tensor, rank: int, world: int) -> dict:
    """Spec (0, 2, 2) in distributed mode: generate() and a manual two-step decode on every rank."""
    from models.cqil.distributed import rank_device
    from models.cqil.plugin import CQILSpec, apply_cqil
    from tests.models.cqil.tiny import make_tiny

    model = make_tiny()
    apply_cqil(model, CQILSpec(0, 2, 2), mode="distributed")
    with torch.no_grad():
        out = two_steps(model, ids)
        out["generated"] = greedy(model, ids[:1])
    out["cache_lengths"] = gather(out["cache_lengths"])
    out["devices"] = gather(str(rank_device()))
    return out


def release_job(ids: torch.Tensor, specs: list, rank: int, world: int) -> dict:
    """Per spec: parameter bytes held before and after `release_unowned_layers` on every rank, the
    released model's logits and greedy tokens, and whether the decoder is marked released."""
    from models.cqil.distributed import RELEASED_ATTR, release_unowned_layers
    from models.cqil.plugin import apply_cqil, decoder_of
    from tests.models.cqil.tiny import make_tiny

    out = {}
    for spec in specs:
        model = make_tiny()
        apply_cqil(model, spec, mode="distributed")
        before = held_bytes(model)
        freed = release_unowned_layers(model)
        after = held_bytes(model)
        with torch.no_grad():
            logits = model(ids).logits
            generated = greedy(model, ids[:1])
        out[spec] = {
            "held": gather((before, after, freed)),
            "logits": logits,
            "generated": generated,
            "marked": getattr(decoder_of(model), RELEASED_ATTR, False),
        }
    return out


def tiny_checks(ids: torch.Tensor, specs: list, rank: int, world: int) -> dict:
    """Both jobs above in one set of ranks (each spawn costs seconds of imports)."""
    return {"start_zero": start_zero_job(ids, rank, world), "release": release_job(ids, specs, rank, world)}


def collective_job(rank: int, world: int) -> dict:
    """50 all-reduces, a broadcast from rank 1, and an all-reduce over the capacity (64 floats)."""
    from common.errors import UserError
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


def raising_job(rank: int, world: int) -> None:
    """Rank 1 raises while rank 0 waits for it in an all-reduce."""
    from models.cqil.shm import collectives

    if rank == 1:
        raise ValueError("rank one broke on purpose\nsecond line of the message")
    collectives().all_reduce_(torch.ones(4))


def stalling_job(seconds: float, rank: int, world: int) -> None:
    """Rank 1 sleeps for `seconds` (alive, not failing) while rank 0 waits for it in an all-reduce."""
    from models.cqil.shm import collectives

    if rank == 1:
        time.sleep(seconds)
    collectives().all_reduce_(torch.ones(4))


def cuda_job(ids: torch.Tensor, spec, rank: int, world: int) -> dict:
    """On each rank's own GPU: sequential and distributed (released) logits and greedy tokens."""
    from models.cqil.distributed import rank_device, release_unowned_layers
    from models.cqil.plugin import apply_cqil
    from tests.models.cqil.tiny import make_tiny

    device = rank_device()
    ids = ids.to(device)
    reference = make_tiny().to(device)
    apply_cqil(reference, spec, mode="sequential")
    model = make_tiny().to(device)
    apply_cqil(model, spec, mode="distributed")
    release_unowned_layers(model)
    with torch.no_grad():
        want, got = reference(ids).logits, model(ids).logits
        want_tokens, got_tokens = greedy(reference, ids[:1]), greedy(model, ids[:1])
    return {
        "devices": gather(str(device)),
        "backend": dist.get_backend(),
        "want": want.cpu(),
        "got": got.cpu(),
        "want_tokens": want_tokens.cpu(),
        "got_tokens": got_tokens.cpu(),
    }
