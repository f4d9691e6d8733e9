"""Hydra's submitit SLURM launcher, with the failures a user meets turned into one line, and job status
read from `squeue` where the cluster keeps no accounting.

- An `sbatch` refusal (a partition that does not exist, a GPU asked of a CPU partition, more CPUs or
  memory than a node has) becomes `error: hydra.launcher.<key>=<value>: sbatch refused the job (<sbatch's
  words>)` and exit status 2, not a traceback.
- A job that fails on the cluster ends the sweep with its own `error:` line (the runner's one-line
  message, when the job wrote one) and the path of its log.
- submitit polls `sacct`, which fails on clusters without accounting storage (a workstation's single
  node, scripts/slurm_local.sh): submitit then warned on every poll and could never see a job die. Such
  clusters are polled with `squeue --states=all` instead; finished jobs stay there for `MinJobAge`.
- Multi-node launches (experiments/cluster/multinode.py): node and task counts that do not make the
  trainer's world are refused at submission; in the job, every task checks its SLURM allocation and its
  way to the rendezvous address before training, and srun ends the other tasks when one fails
  (`--kill-on-bad-exit`), so a broken rank ends the job instead of leaving its peers waiting.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides, setup_globals
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
from omegaconf import OmegaConf
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

from common.errors import exit_with_error, print_error
from experiments.cluster.multinode import check_task, launch_mismatch

log = logging.getLogger(__name__)

# sbatch's words -> the launcher keys that set them (first match wins).
SBATCH_KEYS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"gres|generic resource|gpu", ("gpus_per_node", "gres", "gpus_per_task")),
    (r"partition", ("partition",)),
    (r"memory|\bmem", ("mem_gb", "mem_per_cpu", "mem_per_gpu")),
    (r"time limit", ("timeout_min",)),
    (r"account", ("account",)),
    (r"qos", ("qos",)),
    (r"node count|nodes", ("nodes",)),
    (r"processors|cpus|cpu count|tasks", ("cpus_per_task", "tasks_per_node", "nodes")),
    (r"node configuration", ("cpus_per_task", "tasks_per_node", "nodes", "mem_gb")),
    (r"constraint|feature", ("constraint",)),
)


# Keys of this launcher that are not submitit's: read here, never passed to sbatch.
OWN_KEYS = frozenset({"rendezvous_timeout_s"})


@dataclass
class FivefoldSlurmQueueConf(SlurmQueueConf):
    """submitit's SLURM keys, plus the rendezvous time-out and srun's arguments."""

    # Seconds a rank > 0 tries to reach MASTER_ADDR:MASTER_PORT before the job fails in one line.
    rendezvous_timeout_s: float = 1800.0
    # One failed task ends the others (DDP peers would wait for it until their own time-out).
    srun_args: list[str] = field(default_factory=lambda: ["--kill-on-bad-exit=1"])


# Stored outside the hydra/launcher group, so it is no launcher option of its own (conf/hydra/launcher/slurm.yaml extends it).
ConfigStore.instance().store(name="fivefold_slurm_launcher_schema", node=FivefoldSlurmQueueConf)


def sbatch_refusal(stderr: str, params: dict[str, Any]) -> str:
    """One line naming the launcher key(s) behind an sbatch refusal, with sbatch's own reason."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    reason = next((line for line in lines if "error" in line.lower()), lines[-1] if lines else "no message")
    reason = re.sub(r"^sbatch:\s*error:\s*", "", reason)
    for pattern, keys in SBATCH_KEYS:
        if re.search(pattern, reason, flags=re.IGNORECASE):
            named = [k for k in keys if params.get(k) is not None] or list(keys[:1])
            shown = ", ".join(f"hydra.launcher.{k}={params.get(k)}" for k in named)
            return f"{shown}: sbatch refused the job ({reason}); change {'it' if len(named) == 1 else 'them'} (conf/hydra/launcher/slurm.yaml)"
    return (
        f"hydra.launcher: sbatch refused the job ({reason}); check hydra.launcher.partition, timeout_min, "
        "cpus_per_task, mem_gb, gpus_per_node and additional_parameters"
    )


# Not final, though submitit's incomplete-state list lacks them (a time-out requeue passes through some).
STILL_QUEUED = frozenset(
    {"REQUEUE_HOLD", "REQUEUE_FED", "REQUEUED", "SUSPENDED", "CONFIGURING", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}
)


def task_logs(job: Any) -> list[Path]:
    """The stderr files of a job's tasks, task 0 first (a multi-task job writes one per srun task)."""
    stderr = getattr(job.paths, "stderr", None)
    if stderr is None:
        return []
    stderr = Path(stderr)
    others = sorted(stderr.parent.glob(f"{job.job_id}_*_log.err"), key=lambda p: p.name != stderr.name)
    return others or [stderr]


def job_failure(job: Any, error: BaseException) -> str:
    """The failed job's own `error:` line when a task printed one (a UserError), else the exception's last
    line; the log named is the one the line came from."""
    texts: list[tuple[str, Any]] = [(str(error), job.paths.stderr)]
    for path in task_logs(job):
        with contextlib.suppress(OSError, TypeError):
            texts.append((path.read_text(errors="replace"), path))
    found = [(line.strip(), log) for text, log in texts for line in text.splitlines() if line.strip().startswith("error: ")]
    log = job.paths.stderr
    if found:
        reason, log = found[-1][0][len("error: ") :], found[-1][1]
    else:
        lines = [line.strip() for line in str(error).splitlines() if line.strip() and not line.startswith("-")]
        reason = lines[-1] if lines else type(error).__name__
    state = ""
    with contextlib.suppress(Exception):
        state = f", state {job.watcher.get_state(job.job_id, mode='cache')}"
    return f"SLURM job {job.job_id} failed{state}: {reason} (log: {log})"


def accounting_enabled() -> bool:
    """Whether `sacct` can answer: the controller has an accounting storage other than none."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return True  # keep submitit's own behaviour
    match = re.search(r"^AccountingStorageType\s*=\s*(\S+)", out, flags=re.MULTILINE)
    return match is None or match.group(1) != "accounting_storage/none"


class StatusWatcher(SlurmInfoWatcher):
    """submitit's sacct poller, or `squeue --states=all` on a cluster without accounting storage."""

    def __init__(self, delay_s: int = 60) -> None:
        super().__init__(delay_s=delay_s)
        self._squeue: bool | None = None

    def _make_command(self) -> list[str] | None:
        command = super()._make_command()
        if command is None:
            return None
        if self._squeue is None:
            self._squeue = not accounting_enabled()
            if self._squeue:
                log.info("no SLURM accounting storage: job status comes from squeue")
        if not self._squeue:
            return command
        ids = sorted({x.split("_")[0] for x in self._registered - self._finished})
        return ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%N", "--jobs", ",".join(ids)]

    def is_done(self, job_id: str, mode: str = "standard") -> bool:
        """submitit's rule, plus the states a requeued or held job passes through (not final either)."""
        return super().is_done(job_id, mode) and self.get_state(job_id, mode="cache").upper() not in STILL_QUEUED

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        if self._squeue:
            text = string.decode() if isinstance(string, bytes) else string
            string = "JobID|State|NodeList\n" + text
        return super().read_info(string)


def use_status_watcher() -> None:
    """Jobs of this process (submitit creates array jobs as SlurmJob directly) share one StatusWatcher."""
    if not isinstance(SlurmJob.watcher, StatusWatcher):
        SlurmJob.watcher = StatusWatcher(delay_s=60)


class SlurmLauncher(SubmititSlurmLauncher):
    """The submitit SLURM launcher; submission and waiting kept apart so each failure gets its own line."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit
        from submitit.core.utils import FailedJobError, UncompletedJobError

        assert self.config is not None and job_overrides
        use_status_watcher()
        trainer = self.config.get("trainer")
        if trainer is not None:
            mismatch = launch_mismatch(trainer.num_nodes, trainer.devices, self.params["nodes"], self.params["tasks_per_node"])
            if mismatch:
                exit_with_error(mismatch)
        init_keys = {"max_num_timeout", "submitit_folder", *OWN_KEYS}
        try:
            executor = submitit.AutoExecutor(
                cluster=self._EXECUTOR,
                folder=self.params["submitit_folder"],
                **{f"{self._EXECUTOR}_max_num_timeout": self.params["max_num_timeout"]},
            )
        except RuntimeError as exc:  # "Could not detect srun"
            exit_with_error(
                f"hydra/launcher=slurm: {exc} (no `srun` on PATH; submit from a SLURM login node, or start a "
                "local cluster with scripts/slurm_local.sh start)"
            )
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        try:
            executor.update_parameters(
                **{k if k in base else f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k not in init_keys}
            )
        except ValueError as exc:
            exit_with_error(f"hydra.launcher: {str(exc).splitlines()[0]}")

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        job_params = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))

        captured = io.StringIO()  # submitit echoes sbatch's stderr before raising; the one line below says it
        try:
            with contextlib.redirect_stderr(captured):
                jobs = executor.map_array(self, *zip(*job_params))
        except FailedJobError as exc:
            exit_with_error(sbatch_refusal(str(exc) or captured.getvalue(), self.params))
        sys.stderr.write(captured.getvalue())
        log.info("submitted SLURM job(s) %s", ", ".join(sorted({j.job_id.split("_")[0] for j in jobs})))

        results = []
        for job in jobs:
            try:
                results.append(job.results()[0])
            except UncompletedJobError as exc:
                exit_with_error(job_failure(job, exc))
        return results

    def __call__(
        self,
        sweep_overrides: list[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: dict[type, Singleton],
    ) -> JobReturn:
        """In each SLURM task: the multi-node checks on this job's own config, then the job."""
        assert self.hydra_context is not None and self.config is not None
        Singleton.set_state(singleton_state)
        setup_globals()
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(sweep_overrides))
        if config.get("trainer") is not None:
            problem = check_task(config.trainer, float(self.params.get("rendezvous_timeout_s", 1800.0)))
            if problem:
                print_error(problem)  # the line job_failure() finds in this task's stderr
                sys.stderr.flush()
                raise SystemExit(2)
        return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
