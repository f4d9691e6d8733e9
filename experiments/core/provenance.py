"""What produced a run dir: the project's commit (and its diff when the tree was dirty), Python and
package versions, the host and, under SLURM, the job id and node. Written to `provenance.json` in every run dir
and logged to W&B as config, so a result can be traced to the code that computed it.

A local sweep runs all its jobs in one process: the Python modules are those imported at its start,
but Hydra composes each job's config from the files on disk at that job's start. So `run.py` calls
`remember_launch()` first, and every job records (and warns about) what changed on disk since then:
`launch_git_commit` beside `git_commit`, and `conf_changed_since_launch`, the config files added,
removed or edited. A job with either is a mix of old code and new files.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PACKAGES = (
    "torch",
    "lightning",
    "hydra-core",
    "omegaconf",
    "numpy",
    "transformers",
    "peft",
    "wandb",
    "opencv-contrib-python-headless",
    "torchmetrics",
    "scikit-learn",
    "scipy",
)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def conf_fingerprint(conf_dir: Path = REPO / "conf") -> dict[str, str]:
    """sha256 of every config file under `conf_dir`, by path relative to it."""
    files = sorted(p for p in conf_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return {p.relative_to(conf_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


_launch: dict[str, Any] | None = None


def remember_launch(conf_dir: Path = REPO / "conf") -> None:
    """Record the commit and the config files as this process starts (see the module docstring)."""
    global _launch
    commit = (_git("rev-parse", "HEAD") or "").strip() or None
    _launch = {"commit": commit, "conf_dir": conf_dir, "conf": conf_fingerprint(conf_dir)}


def changed_files(before: dict[str, str], now: dict[str, str]) -> list[str]:
    """Paths added, removed or edited between two fingerprints, sorted."""
    return sorted(path for path in before.keys() | now.keys() if before.get(path) != now.get(path))


def drift_since_launch() -> dict[str, Any]:
    """`launch_git_commit` and `conf_changed_since_launch` for this job; empty when no launch was recorded
    (a process not started by run.py, such as a SLURM job, which imports the code afresh)."""
    if _launch is None:
        return {}
    now = conf_fingerprint(_launch["conf_dir"])
    return {"launch_git_commit": _launch["commit"], "conf_changed_since_launch": changed_files(_launch["conf"], now)}


def drift_warnings(provenance: dict[str, Any]) -> list[str]:
    """One line per way this job mixes the code its process imported with newer files on disk."""
    lines = []
    launch, now = provenance.get("launch_git_commit"), provenance.get("git_commit")
    if launch and now and launch != now:
        lines.append(
            f"the commit changed since this process started ({launch[:12]} -> {now[:12]}): this job runs the "
            "modules imported at the start with config files from the newer tree"
        )
    changed = provenance.get("conf_changed_since_launch") or []
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        lines.append(
            f"conf/ changed since this process started ({shown}): this job's config was composed from the edited "
            "files but runs the code imported at the start; re-launch the sweep to use one version of both"
        )
    return lines


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def collect() -> dict[str, Any]:
    commit = (_git("rev-parse", "HEAD") or "").strip() or None
    status = _git("status", "--porcelain", "--untracked-files=no")
    dirty = bool(status.strip()) if status is not None else None
    return {
        "git_commit": commit,
        **drift_since_launch(),
        "git_dirty": dirty,
        "git_diff": _git("diff", "HEAD") if dirty else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "packages": {name: _version(name) for name in PACKAGES if _version(name) is not None},
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "slurm_node": os.environ.get("SLURMD_NODENAME"),  # the node SLURM ran this attempt on
        "command": " ".join(sys.argv),
    }
