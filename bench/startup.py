"""Wall time of everyday commands (median of repeats), and what a quick run spends its time on.

    python bench/startup.py [--repeats 3] [--fit-repeats 1] [--cache both|on|off] [--only TEXT ...]
                            [--out results/runner/startup.md]

Measures `python run.py --help`, `--cfg job`, a config error, `python run.py` (the quick XOR experiment)
and `experiment=polarity_nonneg_xor`, each with logger=wandb (the default) and logger=none, so the cost of
start-up (imports), W&B and the fits can be told apart. Run it on an idle machine: the figures are
wall-clock times, and a loaded machine stretches them all.

Each command runs with Python's bytecode cache on (the normal __pycache__, warmed by one untimed run
first) and off (PYTHONDONTWRITEBYTECODE=1 and a fresh empty PYTHONPYCACHEPREFIX per run, so every
module is compiled from source, as on a first run after an install); each median is also given as a
multiple of `python -c pass` (the interpreter's own start-up) timed the same way in the same run.
--fit-repeats 0 leaves out the commands that load torch (the fits and the torch import), which take
most of the bench's time; --only keeps the commands whose label contains one of the given texts.
"""

from __future__ import annotations

import argparse
import os
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
    "experiment=polarity_nonneg_xor, logger=wandb",
    "experiment=polarity_nonneg_xor, logger=none",
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
    "experiment=polarity_nonneg_xor, logger=wandb": ["experiment=polarity_nonneg_xor"],
    "experiment=polarity_nonneg_xor, logger=none": ["experiment=polarity_nonneg_xor", "logger=none"],
    "import torch + lightning only": None,
}
FLOOR = "python -c pass (interpreter start-up, the floor)"
LOADS_TORCH = FITS | {"import torch + lightning only"}
CACHE_MODES = {"both": ("on", "off"), "on": ("on",), "off": ("off",)}


def time_command(label: str, args: list[str] | None, repeats: int, cache: str = "on") -> float:
    """Median wall seconds; a command that exits with another status than expected stops the bench.

    cache="on": Python's normal bytecode cache, warmed by one untimed run; "off": no .pyc read or written."""
    times = []
    for run in range(repeats + (cache == "on")):
        with tempfile.TemporaryDirectory() as tmp:
            env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "PATH": "/usr/bin:/bin", "HOME": tmp}
            if cache == "off":  # an empty cache prefix: Python finds no .pyc and, told so, writes none
                os.mkdir(f"{tmp}/pycache")
                env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONPYCACHEPREFIX=f"{tmp}/pycache")
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
                env=env,
            )
            if run or cache == "off":
                times.append(time.perf_counter() - start)
            if done.returncode != EXPECTED_STATUS.get(label, 0):
                raise SystemExit(f"{label}: exit status {done.returncode}; {done.stderr.strip()[-500:]}")
    return statistics.median(times)


def machine() -> str:
    """The date (`date`) and the CPUs this process may use (`nproc`)."""
    date, nproc = (subprocess.run([cmd], capture_output=True, text=True).stdout.strip() for cmd in ("date", "nproc"))
    return f"{date}, nproc {nproc or os.cpu_count()}, Python {sys.version.split()[0]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each short command")
    parser.add_argument(
        "--fit-repeats", type=int, default=1, help="runs of each command that loads torch (the fits, the torch import); 0: none"
    )
    parser.add_argument("--cache", choices=CACHE_MODES, default="both", help="bytecode cache on, off or both")
    parser.add_argument("--only", nargs="+", metavar="TEXT", help="only the commands whose label contains a TEXT")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "runner" / "startup.md")
    args = parser.parse_args()
    modes = CACHE_MODES[args.cache]
    header = "| command | runs |" + "".join(f" cache {m}: median wall s | cache {m}: × floor |" for m in modes)
    rows = [header, "|---|---|" + "---|---|" * len(modes)]
    print("\n".join(rows), flush=True)
    floor: dict[str, float] = {}
    for label, command in COMMANDS.items():
        if label != FLOOR and args.only and not any(text in label for text in args.only):
            continue
        repeats = args.fit_repeats if label in LOADS_TORCH else args.repeats
        if label == FLOOR:
            repeats = max(repeats, 1)  # every ratio needs it
        elif repeats < 1:
            continue
        row = f"| {label} | {repeats} |"
        for mode in modes:
            seconds = time_command(label, command, repeats, mode)
            if label == FLOOR:  # the first command
                floor[mode] = seconds
            row += f" {seconds:.2f} | {seconds / floor[mode]:.1f} |"
        rows.append(row)
        print(row, flush=True)
    notes = [f"Median wall time; {machine()}.", ""]
    notes.append(
        "Cache on: the normal __pycache__, warmed by one untimed run; cache off: PYTHONDONTWRITEBYTECODE=1 and a fresh "
        "empty PYTHONPYCACHEPREFIX per run (every module compiled from source). × floor: the median over "
        "`python -c pass` timed the same way in this run."
    )
    if args.fit_repeats < 1:
        notes.append("Run with --fit-repeats 0: the fits and the torch import are left out.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join([*notes, "", *rows]) + "\n")


if __name__ == "__main__":
    main()
