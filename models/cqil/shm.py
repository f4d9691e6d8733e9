"""Collectives for ranks that are processes on one CPU host, through shared memory.

CQIL's distributed mode needs one all-reduce per group and one broadcast per region, per token. With
gloo on one host each of those goes through TCP and costs 0.3-1 ms, which is most of a decode step of
a small model on CPU (SmolLM2-135M: ~1.3 ms per layer). Here every rank maps the same file in
/dev/shm; a collective is: write your part, publish a step counter, spin until every rank has
published it, read. That costs microseconds, so the CPU emulation of P devices measures CQIL's
concurrency rather than the transport. NCCL on GPUs needs none of this.

Ordering: data is written before the step counter and read after it, and x86-64 keeps stores (and
loads) in program order, so a rank that sees the counter sees the data. Other CPUs may reorder, so
this transport refuses to start there (use gloo). Two buffers alternate between consecutive
collectives: a rank can only start collective s + 1 after every rank published s, i.e. after
everyone finished reading s - 1, the previous user of that buffer.

Failure: a rank that waits longer than `timeout_s` for its peers raises (a peer that died or stopped
must not leave it spinning). The file is checked against the free space of its directory and
reserved before it is mapped: a full tmpfs would otherwise kill the ranks with SIGBUS on first touch.
"""

from __future__ import annotations

import errno
import os
import platform
import secrets
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from common.errors import UserError

_FLOAT_BYTES = 4
_FLAG_SLOTS = 16  # int64 counters: one per rank, each on its own 128-byte line (no false sharing)
DEFAULT_TIMEOUT_S = 600.0  # how long a rank waits for its peers in one collective (also torch.distributed's, see distributed.py)


def shared_memory_supported() -> bool:
    """The ordering argument in the module docstring holds on x86-64 only."""
    return platform.machine().lower() in ("x86_64", "amd64")


def shared_memory_dir() -> Path:
    """FIVEFOLD_SHM_DIR, else /dev/shm (RAM-backed), else the temp dir (a mapped file works there too)."""
    if "FIVEFOLD_SHM_DIR" in os.environ:
        return Path(os.environ["FIVEFOLD_SHM_DIR"])
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def _floats(world: int, capacity: int) -> int:
    """Size of the shared file in floats: two buffers of `world` x `capacity`, and the step counters."""
    return 2 * world * capacity + world * _FLAG_SLOTS * 2  # each int64 counter slot spans two floats


def reserve(path: Path, nbytes: int) -> None:
    """Create `path` with `nbytes` zero bytes (every step counter starts at 0), refusing when its
    directory lacks the room: a tmpfs that fills up kills the process that touches the page (SIGBUS)."""
    if not path.parent.is_dir():
        raise UserError(f"cqil shared-memory dir {path.parent} does not exist: set FIVEFOLD_SHM_DIR to an existing directory")
    stats = os.statvfs(path.parent)
    free = stats.f_bavail * stats.f_frsize
    short = UserError(
        f"cqil shared-memory collectives need {nbytes / 2**20:.1f} MiB in {path.parent}, which has "
        f"{free / 2**20:.1f} MiB free: set FIVEFOLD_SHM_DIR to a directory with more room"
    )
    if free < nbytes:
        raise short
    try:
        with open(path, "wb") as handle:
            handle.truncate(nbytes)
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(handle.fileno(), 0, nbytes)  # allocates now: room taken since the check fails here
    except OSError as error:
        path.unlink(missing_ok=True)
        if error.errno == errno.ENOSPC:
            raise short from None
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without fallocate: truncated is enough
            raise UserError(
                f"cqil shared-memory file {path}: {error.strerror}; set FIVEFOLD_SHM_DIR to a writable directory"
            ) from None
        with open(path, "wb") as handle:
            handle.truncate(nbytes)


class SharedMemoryCollectives:
    """broadcast / all_reduce(SUM) over float32 tensors of up to `capacity` elements, same-host ranks.

    Every rank sums the parts in rank order, so all ranks get bit-identical results (as with gloo)."""

    def __init__(self, path: Path, rank: int, world: int, capacity: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if not shared_memory_supported():
            raise UserError(
                f"shared-memory collectives (latency mode distributed_shm) need an x86-64 CPU (this one is "
                f"{platform.machine()}); use mode distributed (gloo)"
            )
        self.rank, self.world, self.capacity, self.step = rank, world, int(capacity), 0
        self.timeout_s = float(timeout_s)
        size = _floats(world, self.capacity)
        storage = torch.from_file(str(path), shared=True, size=size, dtype=torch.float32)
        self.buffers = storage[: 2 * world * self.capacity].view(2, world, self.capacity)
        self.flags = storage[2 * world * self.capacity :].view(torch.int64).view(world, _FLAG_SLOTS)[:, 0]

    @classmethod
    def create(cls, capacity: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> SharedMemoryCollectives:
        """Called on every rank of an initialised process group: rank 0 names, checks and reserves the
        file, the others map it (gloo at set-up only). A failed check raises on every rank."""
        rank, world = dist.get_rank(), dist.get_world_size()
        name, problem = None, None
        if rank == 0:
            name = f"fivefold-cqil-{os.getpid()}-{secrets.token_hex(4)}"
            try:
                reserve(shared_memory_dir() / name, _floats(world, int(capacity)) * _FLOAT_BYTES)
            except UserError as error:
                problem = str(error)
        shared = [name, problem]
        dist.broadcast_object_list(shared, src=0)
        if shared[1] is not None:
            raise UserError(shared[1])
        path = shared_memory_dir() / shared[0]
        dist.barrier()
        comm = cls(path, rank, world, capacity, timeout_s)
        dist.barrier()
        if rank == 0:
            path.unlink()  # the mappings stay valid; nothing is left in /dev/shm after the run
        return comm

    def _exchange(self, tensor: Tensor, contribute: bool) -> Tensor:
        if tensor.device.type != "cpu":
            raise UserError("shared-memory collectives are for CPU ranks; GPU ranks use mode distributed (NCCL)")
        n = tensor.numel()
        if n > self.capacity:
            raise UserError(
                f"cqil shared-memory collective of {n} floats exceeds its capacity {self.capacity} "
                "(set from cqil.latency.prompt_tokens x the hidden size)"
            )
        self.step += 1
        slot = self.buffers[self.step % 2]
        if contribute:
            slot[self.rank, :n].copy_(tensor.reshape(-1))
        self.flags[self.rank] = self.step
        spins, deadline = 0, None
        while int(self.flags.min()) < self.step:
            os.sched_yield()  # cheap when each rank has a core; keeps progress when ranks share one
            spins += 1
            if spins % 1_000 == 0:  # a peer that died or stalled must not leave this rank spinning forever
                deadline = deadline or time.monotonic() + self.timeout_s
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"cqil shared-memory collective {self.step}: a peer rank did not arrive within {self.timeout_s:g} s"
                    )
        return slot[:, :n]

    def all_reduce_(self, tensor: Tensor) -> Tensor:
        """In-place sum over ranks."""
        parts = self._exchange(tensor.float(), contribute=True)
        tensor.copy_(parts.sum(0).view_as(tensor))
        return tensor

    def broadcast_(self, tensor: Tensor, src: int = 0) -> Tensor:
        """In place: every rank gets `src`'s tensor."""
        parts = self._exchange(tensor.float(), contribute=self.rank == src)
        if self.rank != src:
            tensor.copy_(parts[src].view_as(tensor))
        return tensor


class TorchCollectives:
    """torch.distributed's own collectives (gloo on CPU, NCCL on GPU)."""

    def all_reduce_(self, tensor: Tensor) -> Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast_(self, tensor: Tensor, src: int = 0) -> Tensor:
        dist.broadcast(tensor, src=src)
        return tensor


_ACTIVE: SharedMemoryCollectives | TorchCollectives = TorchCollectives()
COMMS = ("dist", "shm")


def use_collectives(comm: str, capacity: int = 1 << 20, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Select the transport DistributedGroup uses in this process: `dist` (torch.distributed, whose
    timeout is the process group's) or `shm` (shared memory, same-host CPU ranks; `capacity` floats
    per rank and buffer; a wait for peers longer than `timeout_s` seconds raises)."""
    global _ACTIVE
    if comm not in COMMS:
        raise UserError(f"collectives comm={comm!r} must be one of {COMMS}")
    _ACTIVE = SharedMemoryCollectives.create(capacity, timeout_s) if comm == "shm" else TorchCollectives()


def collectives() -> SharedMemoryCollectives | TorchCollectives:
    return _ACTIVE
