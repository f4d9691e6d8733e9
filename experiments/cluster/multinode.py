"""What a multi-node SLURM launch gets wrong, found before training and said in one line.

- World size: SLURM starts `hydra.launcher.nodes` x `hydra.launcher.tasks_per_node` copies of a job, and
  Lightning expects `trainer.num_nodes` x (devices per node) ranks. When they differ, ranks wait for peers
  that never come (or a single-device job runs twice into one run dir). The launcher compares them before
  submitting, and every task compares the trainer with the SLURM environment it was started in.
- Rendezvous: Lightning's ranks meet at MASTER_ADDR:MASTER_PORT (by default the job's first node, port
  15000 + the job id's last four digits). A rank that cannot reach that address would wait in
  `init_process_group` for half an hour and end in a traceback; here every rank > 0 first waits until a
  connection to it succeeds (rank 0 listening) and gives up after `hydra.launcher.rendezvous_timeout_s`
  (default 1800 s, torch's own process-group time-out, as rank 0 may load data for long before it
  listens); rank 0 checks the address is its own, and a loopback address in a job on several nodes is
  refused at once.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from experiments.core.resolvers import slurm_tasks

PROBE_S = 2.0  # one connect attempt; retried until the deadline


def launch_mismatch(num_nodes: int, devices: Any, nodes: int, tasks_per_node: int) -> str | None:
    """The launcher's node and task counts against the trainer's, at submission; None when they agree."""
    ranks_per_node = slurm_tasks(devices)
    if (int(nodes), int(tasks_per_node)) == (int(num_nodes), ranks_per_node):
        return None
    return (
        f"hydra.launcher.nodes={nodes}, hydra.launcher.tasks_per_node={tasks_per_node}: SLURM would start "
        f"{int(nodes) * int(tasks_per_node)} task(s), but trainer.num_nodes={num_nodes} with trainer.devices={devices} "
        f"runs {int(num_nodes) * ranks_per_node} rank(s) ({num_nodes} node(s) x {ranks_per_node}); leave "
        "hydra.launcher.nodes / tasks_per_node at their defaults (from trainer.num_nodes / trainer.devices)"
    )


def environment_mismatch(num_nodes: int, devices: Any, env: Mapping[str, str]) -> str | None:
    """The trainer's world against the SLURM allocation this task runs in; None when they agree or when
    this is not a SLURM task."""
    if "SLURM_NTASKS" not in env or "SLURM_JOB_ID" not in env:
        return None
    ranks_per_node = slurm_tasks(devices)
    want = int(num_nodes) * ranks_per_node
    nodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    tasks = int(env["SLURM_NTASKS"])
    if (nodes, tasks) == (int(num_nodes), want):
        return None
    return (
        f"trainer.num_nodes={num_nodes}, trainer.devices={devices}: {want} rank(s) on {num_nodes} node(s), but SLURM "
        f"job {env['SLURM_JOB_ID']} has {tasks} task(s) on {nodes} node(s); submit with hydra.launcher.nodes="
        f"{num_nodes} hydra.launcher.tasks_per_node={ranks_per_node} (the defaults) or change the trainer"
    )


def _local(address: str) -> bool:
    """Whether this host owns `address` (binding to it succeeds)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


def master_unreachable(host: str, port: int, rank: int, timeout_s: float, nodes: int = 1) -> str | None:
    """Why rank `rank` cannot reach the rendezvous address, or None once a connection to it succeeds
    (a refusal is retried: rank 0 may not listen yet). Rank 0 only checks the address is its own; a
    loopback address in a job on `nodes` > 1 fails at once (each node's loopback is its own)."""
    if timeout_s <= 0:
        return f"hydra.launcher.rendezvous_timeout_s={timeout_s}: must be > 0 seconds"
    deadline = time.monotonic() + timeout_s
    reason = "no answer"
    while True:
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
        except socket.gaierror as error:
            addresses, reason = set(), f"cannot resolve {host}: {error.strerror}"
        if nodes > 1 and addresses and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
            return (
                f"rendezvous: the master address {host} is a loopback address ({', '.join(sorted(addresses))}) in a job "
                f"on {nodes} nodes, which the other nodes cannot reach; make the first node's name resolve to its "
                "network address (/etc/hosts) or set MASTER_ADDR to it"
            )
        if rank == 0 and addresses:
            if any(_local(a) for a in addresses):
                return None
            return (
                f"rendezvous: rank 0 runs on {socket.gethostname()}, but the master address {host} "
                f"({', '.join(sorted(addresses))}) is not this host's; unset MASTER_ADDR or set it to the job's first node"
            )
        for address in sorted(addresses):
            remaining = deadline - time.monotonic()
            try:
                with socket.create_connection((address, port), timeout=max(0.1, min(PROBE_S, remaining))):
                    return None
            except OSError as error:
                reason = (
                    "timed out" if isinstance(error, TimeoutError) else (error.strerror or errno.errorcode.get(error.errno, "?"))
                )
        if time.monotonic() >= deadline:
            return (
                f"rendezvous: rank {rank} on {socket.gethostname()} cannot reach the master address {host}:{port} "
                f"({reason}) within hydra.launcher.rendezvous_timeout_s={timeout_s:g}; check that the nodes reach "
                "each other on that address (MASTER_ADDR / MASTER_PORT override it)"
            )
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def check_task(trainer: Any, timeout_s: float, env: Mapping[str, str] = os.environ) -> str | None:
    """Both checks for this SLURM task of a job with `trainer` (cfg.trainer); None when it may train."""
    mismatch = environment_mismatch(trainer.num_nodes, trainer.devices, env)
    if mismatch or int(env.get("SLURM_NTASKS", "1")) < 2:
        return mismatch
    from lightning.fabric.plugins.environments import SLURMEnvironment

    slurm = SLURMEnvironment()  # the address and port Lightning itself will use
    nodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    return master_unreachable(slurm.main_address, slurm.main_port, int(env["SLURM_PROCID"]), timeout_s, nodes)
