"""What produced a run dir: the project's commit (and its diff when the tree was dirty), Python and
package versions, the host and, under SLURM, the job id. Written to `provenance.json` in every run dir
and logged to W&B as config, so a result can be traced to the code that computed it."""

from __future__ import annotations

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
        "git_dirty": dirty,
        "git_diff": _git("diff", "HEAD") if dirty else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "packages": {name: _version(name) for name in PACKAGES if _version(name) is not None},
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "command": " ".join(sys.argv),
    }
