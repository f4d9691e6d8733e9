"""Wall time of everyday commands (median of repeats), and what a quick run spends its time on.

    python bench/startup.py [--repeats 3] [--fit-repeats 1] [--out results/runner/startup.md]

Measures `python run.py --help`, `--cfg job`, a config error, `python run.py` (the quick XOR experiment)
and `experiment=nonneg_xor`, each with logger=wandb (the default) and logger=none, so the cost of
start-up (imports), W&B and the fits can be told apart. Run it on an idle machine: the figures are
wall-clock times, and a loaded machine stretches them all.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPECTED_STATUS = {
    "config error (dataset.n_train=abc)": 2,
    "range error (seed=-1)": 2,
    "unknown option (model=nope)": 2,
}  # the rest must succeed
FITS = {
    "python run.py (quick XOR), logger=wandb",
    "python run.py (quick XOR), logger=none",
    "experiment=nonneg_xor, logger=wandb",
    "experiment=nonneg_xor, logger=none",
}
COMMANDS = {
    "python -c pass (interpreter start-up, the floor)": ["-c", "pass"],
    "--help": ["--help"],
    "--cfg job": ["--cfg", "job"],
    "config error (dataset.n_train=abc)": ["dataset.n_train=abc"],
    "range error (seed=-1)": ["seed=-1"],
    "unknown option (model=nope)": ["model=nope"],
    "python run.py (quick XOR), logger=wandb": [],
    "python run.py (quick XOR), logger=none": ["logger=none"],
    "experiment=nonneg_xor, logger=wandb": ["experiment=nonneg_xor"],
    "experiment=nonneg_xor, logger=none": ["experiment=nonneg_xor", "logger=none"],
    "import torch + lightning only": None,
}


def time_command(label: str, args: list[str] | None, repeats: int) -> float:
    """Median wall seconds; a command that exits with another status than expected stops the bench."""
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            if args is None:
                cmd = [sys.executable, "-c", "import torch, lightning"]
            elif args[:1] == ["-c"]:
                cmd = [sys.executable, *args]
            else:
                cmd = [sys.executable, "run.py", *args, f"hydra.run.dir={tmp}/run"]
            start = time.perf_counter()
            done = subprocess.run(
                cmd,
                cwd=REPO,
                capture_output=True,
                text=True,
                env={"WANDB_MODE": "offline", "WANDB_SILENT": "true", "PATH": "/usr/bin:/bin", "HOME": tmp},
            )
            times.append(time.perf_counter() - start)
            if done.returncode != EXPECTED_STATUS.get(label, 0):
                raise SystemExit(f"{label}: exit status {done.returncode}; {done.stderr.strip()[-500:]}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each short command")
    parser.add_argument("--fit-repeats", type=int, default=1, help="runs of each command that trains")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "startup.md")
    args = parser.parse_args()
    rows = ["| command | runs | median wall s |", "|---|---|---|"]
    for label, command in COMMANDS.items():
        repeats = args.fit_repeats if label in FITS else args.repeats
        seconds = time_command(label, command, repeats)
        rows.append(f"| {label} | {repeats} | {seconds:.2f} |")
        print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"Median wall time, {time.strftime('%Y-%m-%d')}:\n\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
