"""The SLURM path on two nodes: `scripts/slurm_local.sh start --nodes 2` runs one slurmd per Linux network
namespace (ffnode1, ffnode2: own address on a private bridge, own host name), so jobs, DDP ranks and CQIL
ranks talk over the network between nodes as on a cluster, not over the loopback.

Each test submits as a user would and compares with the same work done without SLURM: a sweep spread over
both nodes, DDP with one rank per node, a node lost mid-fit (its job requeued onto the other node, resumed
from last.ckpt), CQIL's distributed mode with one rank per node. Bounds are counts and states, never wall
time: the machine may be loaded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from models.cqil.plugin import apply_cqil, remove_cqil
from tests.conftest import REPO, cli_env
from tests.experiments.cluster.cqil_rank import IDS, SPECS
from tests.experiments.cluster.test_slurm import (
    SCRIPT,
    SLURM,
    TINY,
    assert_no_status_warnings,
    finish,
    job_ids,
    metrics,
    release_when_held,
    run,
    scontrol_job,
    start,
    wait_until,
)
from tests.models.cqil.tiny import make_tiny

NODES = ("ffnode1", "ffnode2")
# One xdist worker runs every test of the local clusters (they share munged and the machine).
pytestmark = pytest.mark.xdist_group("slurm")
TWO = ("--nodes", "2")


def script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "FIVEFOLD_SLURM_CPUS": os.environ.get("FIVEFOLD_SLURM_CPUS", "2")}
    return subprocess.run(["bash", str(SCRIPT), *args, *TWO], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[str]:
    """Start the two-node cluster (or reuse a running one); skip with the reason when it cannot start."""
    if os.geteuid() != 0:
        pytest.skip("the two-node SLURM cluster needs root (network namespaces, munged, slurmctld, slurmd)")
    missing = [tool for tool in ("slurmctld", "ip", "unshare", "nsenter") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the two-node SLURM cluster needs {', '.join(missing)} on PATH")
    was_running = script("status").returncode == 0
    started = script("start", timeout=900)
    if started.returncode != 0:
        reason = (started.stderr.strip().splitlines() or ["no message"])[-1]
        pytest.skip(f"two-node SLURM cluster did not start: {reason}")
    conf = script("env").stdout.split("=", 1)[1].strip()
    patch = pytest.MonkeyPatch()
    patch.setenv("SLURM_CONF", conf)  # cli_env() copies os.environ: run.py, sbatch and squeue find this cluster
    yield conf
    patch.undo()
    if not was_running:
        script("stop")


def provenance(run_dir: Path) -> dict:
    return json.loads((run_dir / "provenance.json").read_text())


def node_of(run_dir: Path) -> str | None:
    path = run_dir / "provenance.json"
    return provenance(run_dir)["slurm_node"] if path.is_file() else None


@pytest.mark.slurm
def test_a_sweep_spreads_over_both_nodes_and_equals_the_basic_launcher(two_nodes, tmp_path: Path) -> None:
    args = ("-m", "seed=0,1", *TINY, "trainer.max_epochs=3")
    on_slurm = start(*args, *SLURM, "hydra.launcher.nodes=1", f"hydra.sweep.dir={tmp_path / 'slurm'}")
    run(*args, f"hydra.sweep.dir={tmp_path / 'basic'}")  # meanwhile, here
    assert_no_status_warnings(finish(on_slurm))
    assert "--nodes=1" in next((tmp_path / "slurm" / ".submitit").rglob("*_submission.sh")).read_text()
    ran_on = {job: provenance(tmp_path / "slurm" / job) for job in ("0", "1")}
    assert {p["slurm_node"] for p in ran_on.values()} == set(NODES), ran_on
    assert all(p["host"] == p["slurm_node"] for p in ran_on.values()), "each job ran in its node's namespace"
    for job in ("0", "1"):
        assert metrics(tmp_path / "slurm" / job) == metrics(tmp_path / "basic" / job)
    assert metrics(tmp_path / "slurm" / "0") != metrics(tmp_path / "slurm" / "1"), "the seeds reached the jobs"


@pytest.mark.slurm
def test_ddp_with_one_rank_per_node_equals_two_spawned_ranks_on_one_node(two_nodes, tmp_path: Path) -> None:
    args = (*TINY, "trainer.max_epochs=3")
    sweep = tmp_path / "slurm"
    on_slurm = start(
        "-m",
        "seed=0",
        *args,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.num_nodes=2",
        "trainer.devices=1",
        *SLURM,
        f"hydra.sweep.dir={sweep}",
    )
    run(*args, "trainer=ddp_cpu", "trainer.devices=2", f"hydra.run.dir={tmp_path / 'spawn'}")  # meanwhile, here
    finish(on_slurm)
    (job_id,) = job_ids(sweep)
    submission = (sweep / ".submitit" / job_id / f"{job_id}_submission.sh").read_text()
    assert "--nodes=2" in submission and "--ntasks-per-node=1" in submission
    logs = {p.name: p.read_text() for p in (sweep / ".submitit" / job_id).glob("*_log.*")}
    text = "".join(logs.values())
    for rank, node in enumerate(NODES):  # submitit's environment line of each task: rank r on node r
        assert re.search(rf"hostname={node}, local_rank=0\(1\), node={rank}\(2\), global_rank={rank}\(2\)", text), text[-3000:]
    assert "distributed_backend=gloo" in text and "Starting with 2 processes" in text
    assert metrics(sweep / "0") == metrics(tmp_path / "spawn")


@pytest.mark.slurm
def test_cqil_distributed_with_one_rank_per_node_equals_sequential(two_nodes, tmp_path: Path) -> None:
    ranks = subprocess.run(
        ["srun", "--nodes", "2", "--ntasks-per-node", "1", "--chdir", str(REPO)]
        + [sys.executable, "-m", "tests.experiments.cluster.cqil_rank", str(tmp_path)],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ranks.returncode == 0, (ranks.stdout + ranks.stderr)[-3000:]
    where = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(w["rank"], w["world"], w["host"], w["master"]) for w in where] == [(r, 2, NODES[r], NODES[0]) for r in range(2)]
    got = torch.load(tmp_path / "result.pt", weights_only=False)
    for spec in SPECS:
        model = make_tiny()
        apply_cqil(model, spec, mode="sequential")
        with torch.no_grad():
            want = model(IDS).logits
            tokens = model.generate(
                IDS[:1],
                attention_mask=torch.ones_like(IDS[:1]),
                max_new_tokens=6,
                min_new_tokens=6,
                do_sample=False,
                pad_token_id=0,
            )
        remove_cqil(model)
        assert torch.allclose(got[spec.name]["logits"], want, atol=1e-5), spec.name
        assert torch.equal(got[spec.name]["generated"], tokens), spec.name
        with torch.no_grad():
            assert not torch.allclose(model(IDS).logits, want, atol=1e-3), "the region changed the model"


def kill_node(node: str) -> list[int]:
    """What losing a node does to its processes: every process in the node's network namespace (its slurmd,
    the job's slurmstepd and tasks) killed at once, with no chance to clean up or checkpoint."""
    pids = [int(p) for p in subprocess.run(["ip", "netns", "pids", node], capture_output=True, text=True).stdout.split()]
    assert pids, f"nothing runs on {node}"
    for pid in pids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    return pids


@pytest.mark.slurm
def test_a_node_lost_mid_fit_is_requeued_onto_the_other_node_and_resumes(two_nodes, tmp_path: Path) -> None:
    """ffnode2 dies after its job's first checkpoint: the controller marks it DOWN (SlurmdTimeout), requeues
    the job, which reruns on ffnode1 in its job dir from last.ckpt and ends with the uninterrupted metrics;
    the job on ffnode1 runs through untouched. The node is started again afterwards."""
    args = (*TINY, "trainer.max_epochs=40")  # two batches an epoch: the kill lands well before the end
    sweep = tmp_path / "slurm"
    on_slurm = start("-m", "seed=0,1", *args, *SLURM, f"hydra.sweep.dir={sweep}")
    straight = [start(*args, f"seed={job}", f"hydra.run.dir={tmp_path / 'straight' / job}") for job in ("0", "1")]
    try:
        wait_until(lambda: {node_of(sweep / j) for j in ("0", "1")} == set(NODES), "both jobs started on their nodes", on_slurm)
        lost = next(j for j in ("0", "1") if node_of(sweep / j) == NODES[1])
        kept = "1" if lost == "0" else "0"
        checkpoint = sweep / lost / "checkpoints" / "population" / "last.ckpt"
        wait_until(checkpoint.is_file, "first checkpoint on ffnode2", on_slurm)
        kill_node(NODES[1])
        job_id = next(j for j in job_ids(sweep) if j.endswith(f"_{lost}"))
        wait_until(
            lambda: re.search(r"\bRestarts=1\b", scontrol_job(job_id)) is not None, "the requeue after the node failure", on_slurm
        )
        release_when_held(job_id, on_slurm)
        assert_no_status_warnings(finish(on_slurm, timeout=600))
        for process in straight:  # meanwhile, here
            finish(process, timeout=600)
    finally:
        for process in (on_slurm, *straight):
            if process.poll() is None:
                process.kill()
        script("start")  # ffnode2's slurmd again; the node returns to service
    kept_id = next(j for j in job_ids(sweep) if j.endswith(f"_{kept}"))
    assert re.search(r"\bRestarts=0\b", scontrol_job(kept_id)), "the job on the surviving node was not requeued"
    assert "resuming from" not in (sweep / kept / "run.log").read_text()
    assert node_of(sweep / lost) == NODES[0], "the requeued job reran on the surviving node"
    assert "population: resuming from " + str(checkpoint) in (sweep / lost / "run.log").read_text()
    for job in ("0", "1"):
        assert metrics(sweep / job) == metrics(tmp_path / "straight" / job), job
    assert script("status").returncode == 0 and "ffnode2 debug* idle" in script("status").stdout


@pytest.mark.slurm
def test_a_master_address_the_ranks_cannot_use_ends_the_job_in_one_line(two_nodes, tmp_path: Path) -> None:
    """MASTER_ADDR (passed on by sbatch) names an address no node has: rank 0 refuses it as not its own,
    rank 1 gives up reaching it after rendezvous_timeout_s, and the first to fail ends the job (srun
    --kill-on-bad-exit) in one line naming that rank's log, instead of both waiting in init_process_group."""
    refused = subprocess.run(
        [sys.executable, "run.py", "-m", "seed=0", *TINY, "trainer.max_epochs=1", "trainer=ddp", "trainer.accelerator=cpu"]
        + [
            "trainer.num_nodes=2",
            "trainer.devices=1",
            *SLURM,
            "hydra.launcher.rendezvous_timeout_s=5",
            f"hydra.sweep.dir={tmp_path}",
        ],
        cwd=REPO,
        env={**cli_env(), "MASTER_ADDR": "10.217.0.99"},  # on the bridge's subnet; no node has it
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr[-3000:]
    rank0 = (
        r"rank 0 runs on ffnode1, but the master address 10\.217\.0\.99 \(10\.217\.0\.99\) is not this host's; unset MASTER_ADDR"
    )
    rank1 = (
        r"rank 1 on ffnode2 cannot reach the master address 10\.217\.0\.99:\d+ \([^)]+\) within "
        r"hydra.launcher.rendezvous_timeout_s=5; check"
    )
    line = re.match(
        rf"error: SLURM job (\d+) failed, state \w+: rendezvous: (?:{rank0}|{rank1}).* \(log: (.+)\)$", refused.stderr
    )
    assert line, refused.stderr
    rank = "0" if "rank 0 runs" in refused.stderr else "1"
    assert line.group(2).endswith(f"{line.group(1)}_{rank}_log.err"), "the log named is the failing rank's"
    assert not (tmp_path / "0" / "metrics.json").exists()
