"""The life of a run dir before the task starts: an exclusive lock, stale results removed, and a config
fingerprint that keeps a resume from mixing two configs.

A run dir is reused on purpose (SLURM requeue, `ckpt_path=last`) and by accident (a typo'd
`hydra.run.dir`, two sweeps given the same dir). The lock stops two live runs from sharing one dir; the
fingerprint stops a resumed run from continuing checkpoints written under another config.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from common.errors import UserError
from common.files import atomic_write_text

LOCK_FILE = ".run.lock"
FINGERPRINT_FILE = "config_fingerprint.json"
STALE_RESULTS = ("metrics.json", "records.jsonl", "results.md")
# Keys that change how a run reports, never its numbers (a resume may change them; experiments.analysis.aggregate
# pools jobs that differ only in them).
PRESENTATION_ONLY = (
    "logger",
    "paths",
    "hydra",
    "ckpt_path",
    "resume_check",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
)
# Keys that may change between a run and its resume without changing what is computed. The device and
# the number of ranks are not among them: another device draws other random numbers (posRand resets, dropout)
# and rounds differently, and another world size shards the batches differently.
RESUMABLE_CHANGES = PRESENTATION_ONLY + (
    "optimized_metric",
    "callbacks",
    "trainer.max_epochs",
    "trainer.strategy",
)


def under_any(key: str, prefixes: tuple[str, ...]) -> bool:
    """Whether a dotted config key is one of `prefixes` or lies under one of them."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


class RunDirLock:
    """An exclusive, advisory lock on a run dir, held for the life of the run (released when the process
    dies, however it dies, since the OS drops flock locks of a dead process)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UserError(
                f"run dir {self.path.parent} is in use by {holder}; wait for it or choose another hydra.run.dir / hydra.sweep.dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {os.uname().nodename} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def remove_stale_results(run_dir: Path) -> None:
    """A finished run's results must not sit beside a new attempt's config: present = from this run."""
    for name in STALE_RESULTS:
        (run_dir / name).unlink(missing_ok=True)


def _flatten(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def fingerprint(resolved: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """The resolved config as flat `key: value`, without the keys a resume may change; paths inside the
    run dir are written relative to it, so resuming another run dir's checkpoints compares like with like."""
    root = str(Path(run_dir).absolute())
    flat = {k: (v.replace(root, "<run dir>") if isinstance(v, str) else v) for k, v in _flatten(resolved)}
    return {k: v for k, v in flat.items() if not under_any(k, RESUMABLE_CHANGES)}


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """`key: old -> new` for every key whose value differs (or exists on one side only)."""
    missing = object()
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b:
            show = lambda v: "(absent)" if v is missing else json.dumps(v)
            diffs.append(f"{key}: {show(a)} -> {show(b)}")
    return diffs


@dataclass(frozen=True)
class ResumeFrom:
    """What `ckpt_path` asks for, parsed in this one place (see conf/config.yaml):
    `auto` (null: this dir's last.ckpt when there is one), `last` (this dir's, required), `never` ("none"),
    `run_dir` (each fit from its own last.ckpt in another run dir) or `file` (one checkpoint file)."""

    kind: Literal["auto", "last", "never", "run_dir", "file"]
    path: Path | None = None

    @classmethod
    def parse(cls, ckpt_path: Any) -> ResumeFrom:
        if ckpt_path is None:
            return cls("auto")
        if ckpt_path == "last":
            return cls("last")
        if ckpt_path == "none":
            return cls("never")
        path = Path(str(ckpt_path))
        return cls("run_dir" if path.is_dir() else "file", path)

    def checkpoint_root(self, run_dir: Path) -> Path | None:
        """The checkpoints/ folder a resume would read: this run dir's, another run dir's, or a file's run."""
        if self.kind in ("auto", "last"):
            return run_dir / "checkpoints"
        if self.kind == "never":
            return None
        assert self.path is not None
        if self.kind == "run_dir":
            return self.path / "checkpoints"
        return self.path.parent.parent if self.path.parent.parent.name == "checkpoints" else None


def check_resume_config(run_dir: Path, resolved: Mapping[str, Any], ckpt_path: Any, enforce: bool) -> None:
    """Refuse, in one line naming the keys, to resume checkpoints written under a different config; record
    this run's fingerprint beside the checkpoints it will write."""
    current = fingerprint(resolved, run_dir)
    resume = ResumeFrom.parse(ckpt_path)
    source = resume.checkpoint_root(run_dir)
    stored = source / FINGERPRINT_FILE if source is not None else None
    if enforce and stored is not None and stored.is_file():
        try:
            old = json.loads(stored.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        diffs = config_differences(old, current) if isinstance(old, dict) else []
        if diffs:
            shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
            raise UserError(
                f"checkpoints in {source} were written with another config ({shown}): use another "
                "hydra.run.dir, pass ckpt_path=none to start afresh, or resume_check=false to resume anyway"
            )
    if resume.kind == "never" and (run_dir / "checkpoints").is_dir():
        aside = run_dir / f"checkpoints.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        (run_dir / "checkpoints").rename(aside)  # a fresh start must not pick up or version-suffix old files
    target = run_dir / "checkpoints" / FINGERPRINT_FILE
    if not (target.is_file() and enforce and stored == target):
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, json.dumps(current, indent=1, sort_keys=True, default=str) + "\n")
