"""The SLURM path on a real (local, single-node) cluster: scripts/slurm_local.sh starts it.

Every test submits through `python run.py -m ... hydra/launcher=slurm` as a user would and compares with
the same jobs run without SLURM: equal metrics, a requeue and a time-out that resume from last.ckpt, DDP
ranks started by srun, and an array throttled by array_parallelism. The node declares 4 CPUs (more than
a 2-core machine has) so that the array limit, not the node, is what keeps jobs from running at once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from experiments.cluster.slurm_launcher import StatusWatcher, sbatch_refusal
from tests.conftest import REPO, cli_env, compose_config

SCRIPT = REPO / "scripts" / "slurm_local.sh"
# One xdist worker runs every test of the local clusters (they share munged and the machine).
pytestmark = pytest.mark.xdist_group("slurm")
SLURM = ("hydra/launcher=slurm",)
TINY = ("task.num_seeds=2", "logger=csv", "trainer.enable_progress_bar=false")
POLL_S = 0.2


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[str]:
    """Start the local cluster (or reuse a running one); skip with the reason when it cannot start."""
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (scripts/slurm_local.sh starts munged, slurmctld, slurmd)")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("slurm-wlm is not installed and there is no apt-get to install it")
    env = {**os.environ, "FIVEFOLD_SLURM_CPUS": os.environ.get("FIVEFOLD_SLURM_CPUS", "4")}
    was_running = subprocess.run(["bash", str(SCRIPT), "status"], env=env, capture_output=True, timeout=120).returncode == 0
    started = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=900)
    if started.returncode != 0:
        reason = (started.stderr.strip().splitlines() or ["no message"])[-1]
        pytest.skip(f"local SLURM cluster did not start: {reason}")
    conf = subprocess.run(["bash", str(SCRIPT), "env"], env=env, capture_output=True, text=True).stdout.split("=", 1)[1].strip()
    patch = pytest.MonkeyPatch()
    patch.setenv("SLURM_CONF", conf)  # cli_env() copies os.environ: run.py, sbatch and squeue find the cluster
    yield conf
    patch.undo()
    if not was_running:  # leave a cluster someone else started as it was
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=300)


def run_py(*args: str) -> list[str]:
    return [sys.executable, "run.py", *args]


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(run_py(*args), cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    """Wait for a run.py process; its stdout + stderr, after asserting it succeeded."""
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, (out + err)[-3000:]
    return out + err


def run(*args: str, timeout: float = 300) -> str:
    return finish(start(*args), timeout)


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def wait_until(condition, what: str, process: subprocess.Popen | None = None, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"run.py ended ({process.returncode}) while waiting for {what}: {(out + err)[-3000:]}")
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(POLL_S)


def job_ids(sweep: Path) -> list[str]:
    """SLURM ids of a sweep's jobs, from submitit's folders (`123` for one job, `123_0`... for an array)."""
    return sorted(
        p.name
        for p in (sweep / ".submitit").glob("*")
        if re.fullmatch(r"\d+(_\d+)?", p.name) and list(p.glob("*_submitted.pkl")) + list(p.glob("*_result.pkl"))
    )


def scontrol_job(job_id: str) -> str:
    return subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=60).stdout


def job_steps_alive(job_id: str) -> bool:
    """Whether a slurmstepd of the job still runs on this (the only) node."""
    return subprocess.run(["pgrep", "-f", rf"slurmstepd: \[{job_id}\."], capture_output=True).returncode == 0


def release_when_held(
    job_id: str, process: subprocess.Popen, restarts: int = 1, timeout: float = 300, between=lambda: None
) -> None:
    """SLURM holds a requeued job until about two minutes after the requeue (EligibleTime; measured on
    22.05): start it now instead, once it is back in the queue, so the test waits for our code, not the hold.

    Not at once, though: the requeue revokes the job's credential on the node with a one-second clock, and a
    start within the same second is refused ("Job credential revoked", measured on 22.05), which SLURM
    turns into a FAILED job. So the old attempt's steps must be gone and the clock past the next second.
    `between()` runs then: the old attempt is gone and the new one has not started."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        info = scontrol_job(job_id)
        done = re.search(r"\bRestarts=(\d+)", info)
        if done and int(done.group(1)) >= restarts:
            if "JobState=PENDING" in info and "Reason=BeginTime" in info:
                while job_steps_alive(job_id) and time.monotonic() < deadline:
                    time.sleep(POLL_S)
                time.sleep(2.0)
                between()
                subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], timeout=60)
                return
            if "JobState=RUNNING" in info or "JobState=COMPLETED" in info:
                return
        time.sleep(POLL_S)


def assert_no_status_warnings(output: str) -> None:
    assert "Bypassing sacct error" not in output, "status polls failed (no accounting and no squeue fallback)"


@pytest.mark.parametrize(
    ("overrides", "gpus", "tasks"),
    [
        ((), None, 1),  # the default CPU trainer: no gres request
        (("trainer=ddp_cpu",), None, 2),  # srun tasks = devices; Lightning turns spawn into ddp
        (("trainer=ddp", "trainer.accelerator=cpu"), None, 2),
        (("trainer=gpu",), 1, 1),
        (("trainer=ddp", "trainer.devices=[0,1,2]"), 3, 3),
    ],
)
def test_the_launcher_asks_for_gpus_only_for_a_gpu_trainer(overrides, gpus, tasks) -> None:
    launcher = compose_config(["hydra/launcher=slurm", *overrides]).hydra.launcher
    assert (launcher.gpus_per_node, launcher.tasks_per_node) == (gpus, tasks)
    assert launcher.cpus_per_task is None and launcher.mem_gb is None  # the partition's defaults: fits any node


def test_sbatch_refusals_name_the_launcher_key() -> None:
    params = {"partition": "gpu", "gpus_per_node": 2, "mem_gb": 900, "cpus_per_task": 64, "tasks_per_node": 1}
    assert sbatch_refusal("sbatch: error: Invalid generic resource (gres) specification\n", params) == (
        "hydra.launcher.gpus_per_node=2: sbatch refused the job (Invalid generic resource (gres) specification); "
        "change it (conf/hydra/launcher/slurm.yaml)"
    )
    assert sbatch_refusal("sbatch: error: Memory specification can not be satisfied", params).startswith(
        "hydra.launcher.mem_gb=900:"
    )
    assert sbatch_refusal(
        "sbatch: error: Batch job submission failed: More processors requested than permitted", params
    ).startswith("hydra.launcher.cpus_per_task=64, hydra.launcher.tasks_per_node=1:")
    assert "\n" not in sbatch_refusal("sbatch: error: something new\nsecond line", params)


def test_squeue_lines_are_read_as_job_states() -> None:
    watcher = StatusWatcher()
    watcher._squeue = True
    info = watcher.read_info("7_0|COMPLETED|vm\n7_1|RUNNING|vm\n7_[2-5%2]|PENDING|\n8|FAILED|vm\n")
    assert {k: v["State"] for k, v in info.items()} == {
        "7_0": "COMPLETED",
        "7_1": "RUNNING",
        "7_2": "PENDING",
        "7_3": "PENDING",
        "7_4": "PENDING",
        "7_5": "PENDING",
        "8": "FAILED",
    }


@pytest.mark.parametrize(
    ("state", "done"),
    [
        ("REQUEUE_HOLD", False),
        ("REQUEUED", False),
        ("SUSPENDED", False),
        ("RUNNING", False),
        ("COMPLETED", True),
        ("FAILED", True),
    ],
)
def test_a_requeued_or_held_job_is_not_taken_for_finished(state: str, done: bool) -> None:
    """A time-out requeue passes through states submitit's own list does not know; the launcher keeps waiting."""
    watcher = StatusWatcher()
    watcher._info_dict = {"9": {"State": state}}
    assert watcher.is_done("9", mode="cache") is done


@pytest.mark.slurm
def test_two_job_sweep_on_slurm_equals_the_basic_launcher(slurm_cluster, tmp_path: Path) -> None:
    args = ("-m", "seed=0,1", *TINY, "trainer.max_epochs=3")
    on_slurm = start(*args, *SLURM, f"hydra.sweep.dir={tmp_path / 'slurm'}")
    run(*args, f"hydra.sweep.dir={tmp_path / 'basic'}")  # meanwhile, here
    output = finish(on_slurm)
    assert_no_status_warnings(output)
    assert len(job_ids(tmp_path / "slurm")) == 2 and (tmp_path / "slurm" / ".submitit").is_dir()
    for job in ("0", "1"):
        assert metrics(tmp_path / "slurm" / job) == metrics(tmp_path / "basic" / job)
    assert metrics(tmp_path / "slurm" / "0") != metrics(tmp_path / "slurm" / "1"), "the seeds reached the jobs"


@pytest.mark.slurm
def test_a_cpu_trainer_asks_for_no_gpu_and_an_sbatch_refusal_is_one_line(slurm_cluster, tmp_path: Path) -> None:
    refused = subprocess.run(
        run_py("-m", "seed=0,1", "debug=fast", *SLURM, "hydra.launcher.partition=nope", f"hydra.sweep.dir={tmp_path / 'a'}"),
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "error: hydra.launcher.partition=nope: sbatch refused the job (invalid partition "
        "specified: nope); change it (conf/hydra/launcher/slurm.yaml)"
    )
    gpu = subprocess.run(
        run_py("-m", "seed=0,1", "debug=fast", "trainer=gpu", *SLURM, f"hydra.sweep.dir={tmp_path / 'b'}"),
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gpu.returncode == 2 and gpu.stderr.count("\n") == 1, gpu.stderr
    assert gpu.stderr.startswith("error: hydra.launcher.gpus_per_node=1: sbatch refused the job")
    submission = next((tmp_path / "b" / ".submitit").rglob("*.sh")).read_text()
    assert "--gpus-per-node=1" in submission  # a GPU trainer does ask for GPUs (this node has none: refused)


@pytest.mark.slurm
def test_scontrol_requeue_reruns_in_the_job_dir_and_resumes_to_the_uninterrupted_result(slurm_cluster, tmp_path: Path) -> None:
    args = (*TINY, "trainer.max_epochs=25")  # two batches per epoch: SIGTERM may land mid-epoch
    sweep = tmp_path / "slurm"
    job = sweep / "0"
    on_slurm = start("-m", "seed=0", *args, *SLURM, f"hydra.sweep.dir={sweep}")
    checkpoint = job / "checkpoints" / "population" / "last.ckpt"
    wait_until(checkpoint.is_file, "first checkpoint", on_slurm)
    (job_id,) = job_ids(sweep)
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)
    release_when_held(job_id, on_slurm)
    run(*args, f"hydra.run.dir={tmp_path / 'straight'}")  # meanwhile, here
    output = finish(on_slurm)
    assert_no_status_warnings(output)
    assert re.search(r"\bRestarts=1\b", scontrol_job(job_id)), "SLURM ran the job twice"
    log = (job / "run.log").read_text()
    assert "Received SIGTERM" in log, "the requeue signalled the training process"
    assert "population: resuming from " + str(checkpoint) in log, "the rerun went to the same job dir and resumed"
    assert metrics(job) == metrics(tmp_path / "straight")


def parse_submitit_times(log_out: Path) -> tuple[datetime, datetime]:
    """When submitit started the job and when it finished, from its own log lines."""
    stamps = {}
    for line in log_out.read_text().splitlines():
        match = re.search(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)\) - (Starting with|Exiting after successful)", line)
        if match:
            stamps.setdefault(match.group(2), datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f"))
    return stamps["Starting with"], stamps["Exiting after successful"]


@pytest.mark.slurm
def test_an_array_of_six_never_runs_more_than_array_parallelism_at_once(slurm_cluster, tmp_path: Path) -> None:
    sweep = tmp_path / "slurm"
    process = start(
        "-m", "seed=0,1,2,3,4,5", "debug=fast", *SLURM, "hydra.launcher.array_parallelism=2", f"hydra.sweep.dir={sweep}"
    )
    seen = 0
    while process.poll() is None:  # watch the queue while it runs
        ids = {j.split("_")[0] for j in job_ids(sweep)}
        if ids:
            running = subprocess.run(
                ["squeue", "-h", "-t", "RUNNING", "-j", ",".join(ids), "-o", "%i"], capture_output=True, text=True, timeout=60
            ).stdout.split()
            seen = max(seen, len(running))
        time.sleep(POLL_S)
    finish(process, timeout=10)
    assert "--array=0-5%2" in next((sweep / ".submitit").rglob("*_submission.sh")).read_text()
    spans = [parse_submitit_times(sweep / ".submitit" / j / f"{j}_0_log.out") for j in job_ids(sweep)]
    assert len(spans) == 6
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans], key=lambda e: (e[0], e[1]))
    most, now = 0, 0
    for _, step in events:
        now += step
        most = max(most, now)
    assert most <= 2 and seen <= 2, (most, seen)
    assert max(most, seen) == 2, "two ran at once: the 4-CPU node would have run more without the limit"


@pytest.mark.slurm
def test_ddp_over_two_srun_tasks_equals_ddp_spawn_with_two_processes(slurm_cluster, tmp_path: Path) -> None:
    args = (*TINY, "trainer.max_epochs=3")
    on_slurm = start(
        "-m",
        "seed=0",
        *args,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        *SLURM,
        f"hydra.sweep.dir={tmp_path / 'slurm'}",
    )
    run(*args, "trainer=ddp_cpu", f"hydra.run.dir={tmp_path / 'spawn'}")  # meanwhile, here
    finish(on_slurm)
    (job_id,) = job_ids(tmp_path / "slurm")
    submission = (tmp_path / "slurm" / ".submitit" / job_id / f"{job_id}_submission.sh").read_text()
    assert "--ntasks-per-node=2" in submission and "gpus" not in submission
    ranks = sorted((tmp_path / "slurm" / ".submitit" / job_id).glob("*_result.pkl"))
    assert len(ranks) == 2, "srun started two tasks, both finished"
    log = "".join(p.read_text() for p in (tmp_path / "slurm" / ".submitit" / job_id).glob("*_log.*"))
    assert "distributed_backend=gloo" in log and "Starting with 2 processes" in log, log[-3000:]
    assert metrics(tmp_path / "slurm" / "0") == metrics(tmp_path / "spawn")


def checkpoint_epoch(run_dir: Path) -> int:
    """The epoch of the run's newest epoch-end `last.ckpt` (-1 when there is none yet)."""
    import torch

    found = sorted(run_dir.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    return int(torch.load(found[-1], map_location="cpu", weights_only=False)["epoch"]) if found else -1


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(0)  # bounded by attempts instead: submitit gives up after max_num_timeout requeues
def test_a_time_out_is_requeued_by_submitit_and_resumes(slurm_cluster, tmp_path: Path) -> None:
    """timeout_min=1: SLURM sends USR2 signal_delay_s before the limit, submitit requeues the job itself
    (max_num_timeout) and every attempt resumes from the last epoch's last.ckpt until training is done.
    No wall-clock bound (a loaded machine spends most of each minute starting up, and an attempt may end
    before its first epoch does): the attempts are bounded by max_num_timeout, a resume never goes back
    to an earlier epoch, and the job must end with the uninterrupted run's metrics."""
    # 3,000 points (94 batches an epoch) x 150 epochs: 60-75 s of training on a fast idle 2-core machine
    # (60 epochs took 28 s there) and more under load, so the job always outlives the first slot (USR2 came
    # 26-45 s after the start); each attempt resumes where the last epoch-end checkpoint left it
    args = (*TINY, "trainer.max_epochs=150", "dataset.n_train=3000")
    sweep = tmp_path / "slurm"
    on_slurm = start(
        "-m",
        "seed=0",
        *args,
        *SLURM,
        "hydra.launcher.timeout_min=1",
        "hydra.launcher.signal_delay_s=15",
        "hydra.launcher.max_num_timeout=30",
        f"hydra.sweep.dir={sweep}",
    )
    straight = start(*args, f"hydra.run.dir={tmp_path / 'straight'}")  # meanwhile, here
    wait_until(lambda: bool(job_ids(sweep)), "submission", on_slurm)
    (job_id,) = job_ids(sweep)
    restarts, epochs = 0, []
    while on_slurm.poll() is None:
        release_when_held(
            job_id, on_slurm, restarts=restarts + 1, timeout=600, between=lambda: epochs.append(checkpoint_epoch(sweep / "0"))
        )
        restarts += 1
        assert epochs == sorted(epochs), f"a resume went back to an earlier epoch: {epochs}"
    output = finish(on_slurm, timeout=60)
    finish(straight, timeout=600)
    assert_no_status_warnings(output)
    submitit_log = (sweep / ".submitit" / job_id / f"{job_id}_0_log.out").read_text()
    assert "this job is timed-out" in submitit_log and "Requeued job" in submitit_log
    assert re.search(r"\bRestarts=[1-9]", scontrol_job(job_id))
    assert "population: resuming from" in (sweep / "0" / "run.log").read_text()
    assert epochs and max(epochs) >= 0, f"the job was never requeued from a checkpoint: {epochs}"
    assert metrics(sweep / "0") == metrics(tmp_path / "straight")
