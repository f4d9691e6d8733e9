"""`distributed` mode: one process per device with torch.distributed (paper Sec. 4, multi-GPU case).

Rank r computes the members (i - S) mod P == r of each group; the group's output is
h + all_reduce_SUM(Layer_j(h) - h) (one all-reduce per group); the region input is broadcast from
rank 0 at the start of the region. Layers outside the region are replicated: every rank runs them on
identical inputs, so rank 0's work (and latency) is exactly that of the paper's layout where rank 0
alone holds them, and every rank can run HF `generate()` unchanged. With P members and a world of W
ranks, a rank owns members j with j mod W == rank (W = P is the paper's case). With bypass (D > 0)
a rank also computes the attention of the earlier members its own members read (correct, but
slower; the authors recommend D = 0 after recovery).

KV cache: a rank fills the cache layers of the members it computes. For every other member it
appends a (B, 1, T, 1) zero placeholder, so every cache layer's sequence length stays right on
every rank: HF derives positions and mask sizes from one layer's length (layer 0 by default), which
with S = 0 is a member that rank >= 1 does not compute. The placeholders cost 1 / (kv_heads x head_dim)
of a real cache layer.

Memory: `release_unowned_layers(model)` moves the parameters a rank never uses to the meta device,
as in the reference implementation where each device holds only its members: the whole member
with D = 0; with D > 0, a member whose attention an owned member reads keeps its attention (and
input norm) and loses only its MLP (and post-attention norm). A released model cannot go back to
its original layers, so the decoder is marked (`RELEASED_ATTR`) and `remove_cqil` refuses it.

Devices and processes: `spawn` runs a job in fresh processes (gloo on CPU, NCCL when every rank has
a GPU); under NCCL each rank selects `cuda:<local rank>` before its process group is created, and
`rank_device()` tells a job where to put its model. A rank whose job raises does not wait for its
peers: `spawn` stops the others and raises one line naming the first rank that failed. A rank
waiting for a peer that stopped answering gives up after `timeout_s` (torch.distributed's timeout,
and the shared-memory transport's). With `comm="shm"` the per-token collectives of same-host CPU
ranks go through shared memory instead of gloo's TCP (shm.py).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from common.errors import UserError
from models.cqil.plugin import CQILSpec, attentions_read, decoder_of, member_deltas
from models.cqil.shm import DEFAULT_TIMEOUT_S, collectives, use_collectives

RELEASED_ATTR = "_cqil_released"  # set on the decoder by release_unowned_layers; remove_cqil refuses such a model
_RELEASED_PARTS = ("mlp", "post_attention_layernorm")  # what a member whose attention is still read gives up


def rank_device() -> torch.device:
    """Where this rank's model belongs: its own GPU under NCCL (selected before the process group was
    created), else the CPU."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters() if not p.is_meta)


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
        self.nccl = dist.get_backend() == "nccl"
        self.owned = [j for j in range(len(members)) if j % self.world == self.rank]
        self.distance = spec.bypass_distance
        self.residual = spec.bypass_residual
        self.is_first = int(members[0].self_attn.layer_idx) == spec.start
        # members whose attention this rank computes: its own, and with bypass those its own members read
        self.attended = attentions_read(self.owned, self.distance)
        self.layer_indices = [int(m.self_attn.layer_idx) for m in members]

    def forward(self, hidden_states: Tensor, *args, **kwargs) -> Tensor:
        if args:
            raise TypeError("CQIL groups take the layer's extra inputs as keywords (as HF decoders pass them)")
        if self.nccl and hidden_states.device.type != "cuda":
            raise UserError(
                "cqil mode=distributed over NCCL: the model is on the CPU; move it to rank_device() "
                "(models.cqil.distributed) on every rank"
            )
        comm = collectives()
        if self.is_first:
            hidden_states = comm.broadcast_(hidden_states.contiguous(), src=0)
        deltas = member_deltas(self.members, hidden_states, kwargs, self.distance, self.residual, self.owned)
        self._keep_cache_lengths(hidden_states, kwargs.get("past_key_values"))
        total = torch.stack(deltas).sum(0) if deltas else torch.zeros_like(hidden_states)
        return hidden_states + comm.all_reduce_(total)

    def _keep_cache_lengths(self, hidden: Tensor, cache: Any) -> None:
        """Append a (B, 1, T, 1) placeholder to the cache layer of each member whose attention this rank
        skips, so that every layer's sequence length (what HF derives positions from) stays right."""
        if cache is None:
            return
        placeholder = hidden.new_zeros(hidden.shape[0], 1, hidden.shape[1], 1)
        for j, idx in enumerate(self.layer_indices):
            if j not in self.attended:
                cache.update(placeholder, placeholder, idx)

    def release(self) -> int:
        """Move what this rank never computes to the meta device; returns the bytes freed."""
        freed = 0
        for j, member in enumerate(self.members):
            if j in self.owned:
                continue
            parts = [getattr(member, name) for name in _RELEASED_PARTS] if j in self.attended else [member]
            for part in parts:
                freed += _bytes(part)
                part.to("meta")
        return freed


def release_unowned_layers(model: nn.Module) -> int:
    """Free, on this rank, the parameters of the region's members it does not compute (see the module
    docstring for what bypass keeps); returns the bytes freed. Call it once the model is on its device
    (meta tensors cannot be moved). The model then stays in CQIL mode for good: its decoder is marked
    with `RELEASED_ATTR` and `remove_cqil` refuses it."""
    decoder = decoder_of(model)
    groups = [layer for layer in decoder.layers if isinstance(layer, DistributedGroup)]
    if not groups:
        raise UserError("release_unowned_layers: apply_cqil(model, spec, mode='distributed') first")
    freed = sum(group.release() for group in groups)
    object.__setattr__(decoder, RELEASED_ATTR, True)
    return freed


def _select_gpu(local_rank: int) -> None:
    """NCCL binds a rank to the current CUDA device: select the rank's own before the group exists."""
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise UserError(
            f"cqil distributed over NCCL: local rank {local_rank} needs cuda:{local_rank}, but {count} GPU(s) are visible"
        )
    torch.cuda.set_device(local_rank)


def _error_file(folder: str, rank: int) -> Path:
    return Path(folder) / f"error-{rank}.json"


def _worker(
    rank: int,
    world_size: int,
    folder: str,
    backend: str,
    threads: int,
    job: Callable[[int, int], Any],
    comm: str,
    shm_capacity: int,
    timeout_s: float,
) -> None:
    torch.set_num_threads(threads)
    try:
        if backend == "nccl":
            _select_gpu(rank)
        dist.init_process_group(
            backend,
            init_method=f"file://{Path(folder) / 'init'}",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
        )
        use_collectives(comm, shm_capacity, timeout_s)
        result = job(rank, world_size)
        if rank == 0:
            torch.save(result, Path(folder) / "result.pt")
    except Exception as error:  # no barrier: the peers may be waiting in a collective; spawn stops them
        user = isinstance(error, UserError)
        message = str(error) if user else f"{type(error).__name__}: {error}"
        record = {"rank": rank, "time": time.monotonic(), "user": user, "message": message}
        partial = _error_file(folder, rank).with_suffix(".part")
        partial.write_text(json.dumps(record))
        partial.replace(_error_file(folder, rank))  # whole or absent: spawn may kill this process any moment
        raise
    dist.barrier()
    dist.destroy_process_group()


def _first_failure(folder: str, error: Exception) -> Exception:
    """One line for the rank that failed first: a rank that died without a Python error (a signal, an
    exit code) as torch reports it, else the earliest recorded error (ranks on one host share the
    monotonic clock)."""
    records = [json.loads(p.read_text()) for p in Path(folder).glob("error-*.json")]
    index = getattr(error, "error_index", "?")
    if isinstance(error, torch.multiprocessing.ProcessExitedException) and all(r["rank"] != index for r in records):
        records = []
    if not records:
        return RuntimeError(f"cqil distributed: rank {index} failed: {_first_line(str(error))}")
    first = min(records, key=lambda r: r["time"])
    message = f"cqil distributed: rank {first['rank']} failed: {_first_line(first['message'])}"
    return UserError(message) if first["user"] else RuntimeError(message)


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


def spawn(
    job: Callable[[int, int], Any],
    world_size: int = 2,
    backend: str | None = None,
    threads: int = 1,
    comm: str = "dist",
    shm_capacity: int = 1 << 20,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Any:
    """Run `job(rank, world_size)` in `world_size` fresh processes (gloo on CPU, NCCL when every rank has
    a GPU: rank r on cuda:r) and return rank 0's result. `job` must be picklable (a module-level
    function or functools.partial). `comm="shm"` moves the CQIL collectives to shared memory
    (same-host CPU ranks, see shm.py). A rank waiting longer than `timeout_s` seconds for a peer
    fails; when a rank fails the others are stopped and this raises one line naming it (UserError
    when that rank's error was one)."""
    if world_size < 2:
        raise UserError(f"distributed world_size={world_size}: need >= 2 processes")
    if timeout_s <= 0:
        raise UserError(f"distributed timeout_s={timeout_s}: must be > 0 seconds")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    backend = backend or ("nccl" if gpus >= world_size else "gloo")
    if backend == "nccl" and gpus < world_size:
        raise UserError(f"distributed backend=nccl needs one GPU per rank: world_size={world_size}, {gpus} GPU(s) visible")
    with tempfile.TemporaryDirectory() as folder:
        try:
            torch.multiprocessing.spawn(
                _worker,
                args=(world_size, folder, backend, threads, job, comm, shm_capacity, timeout_s),
                nprocs=world_size,
                join=True,
            )
        except (torch.multiprocessing.ProcessRaisedException, torch.multiprocessing.ProcessExitedException) as error:
            failure = _first_failure(folder, error)
            raise failure from (None if isinstance(failure, UserError) else error)
        return torch.load(Path(folder) / "result.pt", weights_only=False)


def init_from_env(
    backend: str | None = None, comm: str = "dist", shm_capacity: int = 1 << 20, timeout_s: float = DEFAULT_TIMEOUT_S
) -> bool:
    """Join the process group torchrun describes (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR); False
    when not under torchrun. Under NCCL the rank selects cuda:LOCAL_RANK first."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) < 2:
        return False
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            _select_gpu(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        use_collectives(comm, shm_capacity, timeout_s)
    return True
