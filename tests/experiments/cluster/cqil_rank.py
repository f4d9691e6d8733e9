"""One rank of CQIL's distributed mode as an srun task (`srun --nodes 2 --ntasks-per-node 1 python -m
tests.experiments.cluster.cqil_rank <out dir>`): the rank joins a gloo group whose master is the job's first
node through `models.cqil.distributed.init_from_env`, as a torchrun rank would, computes its members of the
tiny LLaMA's CQIL region, and writes where it ran; rank 0 also saves the logits and greedy tokens."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from models.cqil.distributed import init_from_env
from models.cqil.plugin import CQILSpec
from tests.models.cqil.tiny import distributed_job

IDS = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(3))
# P = W = 2 (the paper's layout), and P = 3 members with bypass D = 1 over two ranks.
SPECS = (CQILSpec(1, 3, 2), CQILSpec(1, 4, 3, 1))


def slurm_rendezvous() -> None:
    """torchrun's variables from SLURM's: ranks from the task ids, the master on the job's first node."""
    first = subprocess.run(
        ["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    os.environ.update(
        RANK=os.environ["SLURM_PROCID"],
        WORLD_SIZE=os.environ["SLURM_NTASKS"],
        LOCAL_RANK=os.environ["SLURM_LOCALID"],
        MASTER_ADDR=first,
        MASTER_PORT=str(20000 + int(os.environ["SLURM_JOB_ID"]) % 20000),
    )


def main(out: Path) -> None:
    slurm_rendezvous()
    if not init_from_env(backend="gloo", timeout_s=120):
        raise SystemExit("cqil_rank: WORLD_SIZE < 2: run it as srun --ntasks 2 or more")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {spec.name: distributed_job(IDS, spec, rank, world) for spec in SPECS}
    where = {"rank": rank, "world": world, "host": socket.gethostname(), "node": os.environ.get("SLURMD_NODENAME")}
    where["master"] = os.environ["MASTER_ADDR"]
    (out / f"rank{rank}.json").write_text(json.dumps(where))
    if rank == 0:
        torch.save(results, out / "result.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
