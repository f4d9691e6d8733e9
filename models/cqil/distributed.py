"""`distributed` mode: one process per device with torch.distributed (paper Sec. 4, multi-GPU case).

Rank r computes the members (i - S) mod P == r of each group; the group's output is
h + all_reduce_SUM(Layer_j(h) - h) (one all-reduce per group); the region input is broadcast from
rank 0 at the start of the region. Layers outside the region are replicated: every rank runs them on
identical inputs, so rank 0's work (and latency) is exactly that of the paper's layout where rank 0
alone holds them, and every rank can run HF `generate()` unchanged. With P members and a world of W
ranks, a rank owns members j with j mod W == rank (W = P is the paper's case). With bypass (D > 0)
a rank also recomputes the attention of the earlier members it needs (correct, but slower; the
authors recommend D = 0 after recovery). Backends: gloo on CPU, NCCL on GPU; with `comm="shm"` the
per-token collectives of same-host CPU ranks go through shared memory instead of gloo's TCP (shm.py).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from common.errors import UserError
from models.cqil.plugin import CQILSpec, member_deltas
from models.cqil.shm import collectives, use_collectives


class DistributedGroup(nn.Module):
    """A CQIL group split over the ranks of the default process group."""

    def __init__(self, members: Sequence[nn.Module], spec: CQILSpec) -> None:
        super().__init__()
        if not (dist.is_available() and dist.is_initialized()):
            raise UserError(
                "cqil mode=distributed needs torch.distributed initialised "
                "(torchrun, or run.py with cqil.mode=distributed cqil.world_size=N)"
            )
        self.members = nn.ModuleList(members)
        self.world = dist.get_world_size()
        self.rank = dist.get_rank()
        self.owned = [j for j in range(len(members)) if j % self.world == self.rank]
        self.distance = spec.bypass_distance
        self.residual = spec.bypass_residual
        self.is_first = int(members[0].self_attn.layer_idx) == spec.start

    def forward(self, hidden_states: Tensor, *args, **kwargs) -> Tensor:
        comm = collectives()
        if self.is_first:
            hidden_states = comm.broadcast_(hidden_states.contiguous(), src=0)
        deltas = member_deltas(self.members, hidden_states, kwargs, self.distance, self.residual, self.owned)
        total = torch.stack(deltas).sum(0) if deltas else torch.zeros_like(hidden_states)
        return hidden_states + comm.all_reduce_(total)


def _worker(
    rank: int,
    world_size: int,
    init_file: str,
    backend: str,
    threads: int,
    job: Callable[[int, int], Any],
    out_file: str,
    comm: str,
    shm_capacity: int,
) -> None:
    torch.set_num_threads(threads)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        use_collectives(comm, shm_capacity)
        result = job(rank, world_size)
        if rank == 0:
            torch.save(result, out_file)
    finally:
        dist.barrier()
        dist.destroy_process_group()


def spawn(
    job: Callable[[int, int], Any],
    world_size: int = 2,
    backend: str | None = None,
    threads: int = 1,
    comm: str = "dist",
    shm_capacity: int = 1 << 20,
) -> Any:
    """Run `job(rank, world_size)` in `world_size` fresh processes (gloo on CPU, NCCL on GPU) and
    return rank 0's result. `job` must be picklable (a module-level function or functools.partial).
    `comm="shm"` moves the CQIL collectives to shared memory (same-host CPU ranks, see shm.py)."""
    if world_size < 2:
        raise UserError(f"distributed world_size={world_size}: need >= 2 processes")
    backend = backend or ("nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world_size else "gloo")
    with tempfile.TemporaryDirectory() as tmp:
        init_file, out_file = str(Path(tmp) / "init"), str(Path(tmp) / "result.pt")
        torch.multiprocessing.spawn(
            _worker,
            args=(world_size, init_file, backend, threads, job, out_file, comm, shm_capacity),
            nprocs=world_size,
            join=True,
        )
        return torch.load(out_file, weights_only=False)


def init_from_env(backend: str | None = None, comm: str = "dist", shm_capacity: int = 1 << 20) -> bool:
    """Join the process group torchrun describes (RANK / WORLD_SIZE / MASTER_ADDR); False when not under torchrun."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) < 2:
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
        use_collectives(comm, shm_capacity)
    return True
