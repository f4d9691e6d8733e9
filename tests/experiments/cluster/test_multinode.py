"""The multi-node checks (experiments/cluster/multinode.py) without a cluster: world sizes from the launcher
and from a SLURM environment, and the rendezvous probe against sockets this test opens."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from experiments.cluster.multinode import check_task, environment_mismatch, launch_mismatch, master_unreachable

UNROUTABLE = "192.0.2.1"  # TEST-NET-1 (RFC 5737): never answers


def slurm_env(nodes: int, tasks: int, rank: int = 0) -> dict[str, str]:
    return {
        "SLURM_JOB_ID": "77",
        "SLURM_NTASKS": str(tasks),
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_PROCID": str(rank),
    }


def test_the_launcher_counts_must_make_the_trainers_world() -> None:
    assert launch_mismatch(2, 1, nodes=2, tasks_per_node=1) is None
    assert launch_mismatch(1, [0, 1], nodes=1, tasks_per_node=2) is None
    assert launch_mismatch(2, 1, nodes=1, tasks_per_node=1) == (
        "hydra.launcher.nodes=1, hydra.launcher.tasks_per_node=1: SLURM would start 1 task(s), but "
        "trainer.num_nodes=2 with trainer.devices=1 runs 2 rank(s) (2 node(s) x 1); leave hydra.launcher.nodes / "
        "tasks_per_node at their defaults (from trainer.num_nodes / trainer.devices)"
    )
    assert launch_mismatch(1, 1, nodes=2, tasks_per_node=1).startswith("hydra.launcher.nodes=2,")  # the job would run twice
    assert launch_mismatch(1, 2, nodes=1, tasks_per_node=1).startswith("hydra.launcher.nodes=1, hydra.launcher.tasks_per_node=1:")


def test_each_task_compares_the_trainer_with_its_slurm_allocation() -> None:
    assert environment_mismatch(2, 1, {}) is None  # not a SLURM task
    assert environment_mismatch(2, 1, slurm_env(nodes=2, tasks=2)) is None
    assert environment_mismatch(2, 2, slurm_env(nodes=2, tasks=4)) is None
    message = environment_mismatch(2, 1, slurm_env(nodes=1, tasks=1))
    assert message == (
        "trainer.num_nodes=2, trainer.devices=1: 2 rank(s) on 2 node(s), but SLURM job 77 has 1 task(s) on 1 node(s); "
        "submit with hydra.launcher.nodes=2 hydra.launcher.tasks_per_node=1 (the defaults) or change the trainer"
    )
    assert environment_mismatch(1, 2, slurm_env(nodes=1, tasks=3)) is not None
    trainer = SimpleNamespace(num_nodes=2, devices=1)
    assert check_task(trainer, 5.0, slurm_env(nodes=1, tasks=1)) == message


@pytest.fixture
def listening() -> Iterator[int]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_listening_master_is_reached_and_rank_zero_owns_its_address(listening: int) -> None:
    assert master_unreachable("127.0.0.1", listening, rank=1, timeout_s=5) is None
    assert master_unreachable("localhost", closed_port(), rank=0, timeout_s=5) is None  # rank 0 listens later


def test_a_master_that_starts_listening_late_is_waited_for() -> None:
    port = closed_port()
    server = socket.socket()
    timer = threading.Timer(1.0, lambda: (server.bind(("127.0.0.1", port)), server.listen()))
    timer.start()
    try:
        assert master_unreachable("127.0.0.1", port, rank=1, timeout_s=60) is None
    finally:
        timer.join()
        server.close()


@pytest.mark.parametrize("host", [UNROUTABLE, "127.0.0.1"])
def test_a_master_that_never_answers_ends_in_one_line_after_the_timeout(host: str) -> None:
    port = closed_port()
    message = master_unreachable(host, port, rank=1, timeout_s=1)
    assert message is not None and "\n" not in message
    assert message.startswith(f"rendezvous: rank 1 on {socket.gethostname()} cannot reach the master address {host}:{port} (")
    assert message.endswith(
        "within hydra.launcher.rendezvous_timeout_s=1; check that the nodes reach each other on that address "
        "(MASTER_ADDR / MASTER_PORT override it)"
    )
    unresolvable = master_unreachable("no-such-node.invalid", 29500, rank=1, timeout_s=0.5)
    assert unresolvable is not None and "(cannot resolve no-such-node.invalid:" in unresolvable


def test_rank_zero_must_own_the_master_address_and_loopback_serves_one_node_only() -> None:
    message = master_unreachable(UNROUTABLE, 29500, rank=0, timeout_s=5)
    assert message is not None and message.startswith("rendezvous: rank 0 runs on ")
    assert f"the master address {UNROUTABLE} ({UNROUTABLE}) is not this host's" in message
    loopback = master_unreachable("127.0.0.1", closed_port(), rank=1, timeout_s=5, nodes=2)
    assert loopback is not None and "is a loopback address (127.0.0.1) in a job on 2 nodes" in loopback
    assert master_unreachable("127.0.0.1", 29500, rank=1, timeout_s=0) == (
        "hydra.launcher.rendezvous_timeout_s=0: must be > 0 seconds"
    )


def test_a_mismatched_world_is_refused_before_submission_in_one_line(run_cli) -> None:
    """Needs no cluster: the launcher refuses before it looks for sbatch."""
    refused = run_cli(
        "-m",
        "seed=0",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.num_nodes=2",
        "trainer.devices=1",
        "hydra/launcher=slurm",
        "hydra.launcher.nodes=1",
    )
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith(
        "error: hydra.launcher.nodes=1, hydra.launcher.tasks_per_node=1: SLURM would start 1 task(s)"
    )
