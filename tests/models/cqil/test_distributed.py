"""Distributed mode: 2 gloo processes equal sequential mode (logits, KV-cache generation, S = 0 decode
steps, released members); a failing or stalled rank ends the run in bounded time, naming the rank;
the shared-memory transport refuses a directory without room; on GPUs each rank runs on its own."""

from __future__ import annotations

import errno
import functools
import os
import time
from collections import namedtuple

import pytest
import torch

from common.errors import UserError
from models.cqil.distributed import rank_device, release_unowned_layers, spawn
from models.cqil.plugin import CQILSpec, apply_cqil, remove_cqil
from models.cqil.shm import reserve, shared_memory_supported
from tests.models.cqil.distributed_jobs import (
    collective_job,
    cuda_job,
    greedy,
    raising_job,
    stalling_job,
    tiny_checks,
    two_steps,
)
from tests.models.cqil.tiny import distributed_job, make_tiny

needs_x86 = pytest.mark.skipif(not shared_memory_supported(), reason="shared-memory collectives rely on x86-64 store ordering")
shm_param = pytest.param("shm", marks=needs_x86)
IDS = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(3))


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
    ids = IDS
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
    with pytest.raises(UserError, match="timeout_s"):
        spawn(print, world_size=2, timeout_s=0)


def test_outside_a_process_group_a_rank_computes_on_the_cpu():
    assert rank_device() == torch.device("cpu")


# --- one set of gloo ranks serves the S = 0 and release specifications (each spawn costs seconds) ---

RELEASED_SPECS = (CQILSpec(1, 3, 2), CQILSpec(1, 4, 3, 1))
# What each rank (index) gives up: with D = 0 every member it does not own; with D = 1 a member whose
# attention an owned member reads keeps it (and its input norm), losing the MLP and post-attention norm.
# (1, 4, 3, 1): one group, layers 1-3; rank 0 owns layers 1 and 3 (layer 3 reads layer 2's attention),
# rank 1 owns layer 2 (it reads layer 1's attention).
RELEASED = {
    RELEASED_SPECS[0]: (["layers.2"], ["layers.1"]),
    RELEASED_SPECS[1]: (
        ["layers.2.mlp", "layers.2.post_attention_layernorm"],
        ["layers.1.mlp", "layers.1.post_attention_layernorm", "layers.3"],
    ),
}


@pytest.fixture(scope="module")
def tiny_ranks() -> dict:
    return spawn(functools.partial(tiny_checks, IDS, list(RELEASED_SPECS)), world_size=2, backend="gloo")


def _sequential(spec: CQILSpec):
    model = make_tiny()
    apply_cqil(model, spec, mode="sequential")
    return model


@pytest.mark.slow
def test_start_zero_decodes_without_position_ids_like_sequential(tiny_ranks):
    """S = 0: rank 1 does not compute layer 0, whose cache length HF reads for the positions of a decode
    step; every rank's cache layers must all have the true length, so the step equals sequential mode."""
    got = tiny_ranks["start_zero"]
    model = _sequential(CQILSpec(0, 2, 2))
    with torch.no_grad():
        want = two_steps(model, IDS)
        generated = greedy(model, IDS[:1])
    assert got["devices"] == ["cpu", "cpu"]
    assert got["cache_lengths"] == [[IDS.shape[1] + 1] * 4] * 2
    assert torch.allclose(got["prefill"], want["prefill"], atol=1e-5)
    assert torch.allclose(got["decode"], want["decode"], atol=1e-5)
    assert torch.equal(got["generated"], generated)


def _bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("spec", RELEASED_SPECS, ids=lambda s: s.name)
def test_release_frees_what_a_rank_does_not_compute_and_keeps_the_logits(tiny_ranks, spec):
    got = tiny_ranks["release"][spec]
    model = make_tiny()
    decoder, total = model.model, _bytes(model)
    for rank, (before, after, freed) in enumerate(got["held"]):
        expected = sum(_bytes(decoder.get_submodule(name)) for name in RELEASED[spec][rank])
        assert before == total
        assert before - after == freed == expected, f"rank {rank}"
    assert got["marked"] is True  # remove_cqil reads the mark and refuses: the original layers are gone
    model = _sequential(spec)
    with torch.no_grad():
        assert torch.allclose(got["logits"], model(IDS).logits, atol=1e-5)
        assert torch.equal(got["generated"], greedy(model, IDS[:1]))


def test_release_needs_distributed_mode():
    model = make_tiny()
    apply_cqil(model, CQILSpec(1, 3, 2), mode="sequential")
    with pytest.raises(UserError, match="mode='distributed'"):
        release_unowned_layers(model)
    assert all(not p.is_meta for p in model.parameters())


# --- failures end the run in bounded time, naming the rank ---

BOUND_S = 60.0  # generous: spawning two ranks costs seconds; a hang would take the configured timeout or more


@pytest.mark.parametrize("comm", ["dist", shm_param])
def test_a_failing_rank_ends_the_run_naming_it(comm):
    """Rank 1 raises while rank 0 waits for it in a collective: with a timeout far above the bound,
    only not waiting for the failed rank (and stopping its peer) ends the run in time."""
    began = time.monotonic()
    with pytest.raises(RuntimeError, match=r"^cqil distributed: rank 1 failed: ValueError: rank one broke on purpose$"):
        spawn(raising_job, world_size=2, backend="gloo", comm=comm, timeout_s=300)
    assert time.monotonic() - began < BOUND_S


@pytest.mark.slow
@pytest.mark.parametrize("comm", ["dist", shm_param])
def test_a_stalled_peer_times_out_after_the_configured_seconds(comm):
    """Rank 1 sleeps far longer than the bound: rank 0 gives up after timeout_s and names itself."""
    began = time.monotonic()
    with pytest.raises(RuntimeError, match=r"^cqil distributed: rank 0 failed: .*([Tt]imed out|did not arrive within 2 s)"):
        spawn(functools.partial(stalling_job, 10 * BOUND_S), world_size=2, backend="gloo", comm=comm, timeout_s=2)
    assert time.monotonic() - began < BOUND_S


# --- the shared-memory file never outgrows its directory ---

FakeStats = namedtuple("FakeStats", "f_bavail f_frsize")


def test_reserve_refuses_a_directory_without_room(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "statvfs", lambda path: FakeStats(f_bavail=10, f_frsize=4096))
    with pytest.raises(UserError, match=r"need 1\.0 MiB in .* 0\.0 MiB free: set FIVEFOLD_SHM_DIR"):
        reserve(tmp_path / "buffers", 1 << 20)
    assert not list(tmp_path.iterdir())


def test_reserve_refuses_when_the_room_is_gone_by_allocation_time(tmp_path, monkeypatch):
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(UserError, match="FIVEFOLD_SHM_DIR"):
        reserve(tmp_path / "buffers", 4096)
    assert not list(tmp_path.iterdir())


def test_reserve_makes_a_zeroed_file_of_the_size(tmp_path):
    reserve(tmp_path / "buffers", 10_000)
    assert (tmp_path / "buffers").read_bytes() == bytes(10_000)


@needs_x86
def test_shared_memory_collectives_sum_and_broadcast_across_processes(tmp_path, monkeypatch):
    """50 back-to-back all-reduces (the two buffers alternate), a broadcast from rank 1, a capacity error,
    and no file left in the shared-memory dir."""
    monkeypatch.setenv("FIVEFOLD_SHM_DIR", str(tmp_path))
    got = spawn(collective_job, world_size=2, backend="gloo", comm="shm", shm_capacity=64)
    for step, total in enumerate(got["sums"]):
        assert torch.equal(total, torch.full((3, 5), 3.0 * (step + 1)))
    assert torch.equal(got["sent"], torch.arange(6.0).view(2, 3) + 10)
    assert "exceeds its capacity 64" in got["too_big"]
    assert not list(tmp_path.iterdir())


@needs_x86
def test_shared_memory_too_large_for_its_directory_fails_every_rank_in_one_line(tmp_path, monkeypatch):
    """Rank 0's size check reaches every rank (none is left waiting for the file), as a UserError."""
    monkeypatch.setenv("FIVEFOLD_SHM_DIR", str(tmp_path))
    with pytest.raises(UserError, match=r"^cqil distributed: rank [01] failed: cqil shared-memory .* set FIVEFOLD_SHM_DIR"):
        spawn(collective_job, world_size=2, backend="gloo", comm="shm", shm_capacity=1 << 50, timeout_s=300)
    assert not list(tmp_path.iterdir())


# --- GPUs: each rank on its own device ---


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="the refusal needs fewer than 2 GPUs")
def test_nccl_needs_a_gpu_per_rank():
    with pytest.raises(UserError, match="one GPU per rank"):
        spawn(print, world_size=2, backend="nccl")


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (one per rank)")
@pytest.mark.parametrize("spec", [CQILSpec(1, 3, 2), CQILSpec(0, 2, 2), CQILSpec(1, 4, 3, 1)], ids=lambda s: s.name)
def test_two_nccl_ranks_on_their_own_gpus_equal_sequential(spec):
    got = spawn(functools.partial(cuda_job, IDS, spec), world_size=2)
    assert got["backend"] == "nccl"
    assert got["devices"] == ["cuda:0", "cuda:1"]
    assert torch.allclose(got["got"], got["want"], atol=1e-4)
    assert torch.equal(got["got_tokens"], got["want_tokens"])
