"""Wall time of everyday commands (median of repeats), and what a quick run spends its time on.

    python bench/startup.py [--repeats 3] [--out results/bench/startup.md]

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
COMMANDS = {
    "--help": ["--help"],
    "--cfg job": ["--cfg", "job"],
    "config error (dataset.n_train=abc)": ["dataset.n_train=abc"],
    "python run.py (quick XOR), logger=wandb": [],
    "python run.py (quick XOR), logger=none": ["logger=none"],
    "experiment=nonneg_xor, logger=wandb": ["experiment=nonneg_xor"],
    "experiment=nonneg_xor, logger=none": ["experiment=nonneg_xor", "logger=none"],
    "import torch + lightning only": None,
}


def time_command(args: list[str] | None, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = (
                [sys.executable, "-c", "import torch, lightning"]
                if args is None
                else [sys.executable, "run.py", *args, f"hydra.run.dir={tmp}/run"]
            )
            start = time.perf_counter()
            subprocess.run(
                cmd,
                cwd=REPO,
                capture_output=True,
                env={"WANDB_MODE": "offline", "WANDB_SILENT": "true", "PATH": "/usr/bin:/bin", "HOME": tmp},
            )
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "startup.md")
    args = parser.parse_args()
    rows = ["| command | median wall s |", "|---|---|"]
    for label, command in COMMANDS.items():
        seconds = time_command(command, args.repeats)
        rows.append(f"| {label} | {seconds:.2f} |")
        print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"Median of {args.repeats} runs each, {time.strftime('%Y-%m-%d')}:\n\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
