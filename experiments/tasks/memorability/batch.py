"""`python -m experiments.tasks.memorability.batch <run.py arguments>`: the same as `python run.py ...`,
kept as a name for scripts that batch folders. The exit status is run.py's:

    0  every video was scored (now or by an earlier run in the same run dir)
    2  bad input or config, one line on stderr: e.g. a folder without a matching file, or a batch in
       which no video could be read at all
    3  the batch completed and wrote its results, but some videos could not be processed: they are in
       artifacts/failures.csv with their errors

Anything else is a crash (1). In a `-m` sweep with Hydra's default launcher the status is the largest
over its jobs.
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

RUN_PY = Path(__file__).resolve().parents[3] / "run.py"


def main(argv: Sequence[str] | None = None) -> None:
    """Run run.py as `python run.py <argv>` would (same config search path, errors and exit status)."""
    sys.argv = [str(RUN_PY), *(sys.argv[1:] if argv is None else argv)]
    runpy.run_path(str(RUN_PY), run_name="__main__")  # ends with run.py's sys.exit


if __name__ == "__main__":
    main()
