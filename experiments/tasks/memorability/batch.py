"""`python -m experiments.tasks.memorability.batch <run.py arguments>`: run.py, with an exit status that
says whether videos of a crop batch failed, for scripts that batch folders.

    0  every video was scored (now or by an earlier run in the same run dir)
    2  bad input or config, one line on stderr (run.py's own status): e.g. a folder without a matching
       file, or a batch in which no video could be read at all
    3  the batch completed and wrote its results, but some videos could not be processed: they are in
       artifacts/failures.csv with their errors (run.py itself exits 0 then)

Anything else is run.py's (1: a crash). The failures counted are those of every crop run in this process
(each job of a `-m` sweep with Hydra's default launcher), earlier attempts of a resumed run included.
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

FAILED_VIDEOS = 3
RUN_PY = Path(__file__).resolve().parents[3] / "run.py"
TASK_MODULE = "experiments.tasks.memorability.task"


def exit_status(failures: Sequence[int]) -> int:
    """0 when no run had a failed video, else FAILED_VIDEOS."""
    return FAILED_VIDEOS if any(count > 0 for count in failures) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run run.py as `python run.py <argv>` would (same config search path, same error handling), then
    report the failed videos as the exit status."""
    sys.argv = [str(RUN_PY), *(sys.argv[1:] if argv is None else argv)]
    runpy.run_path(str(RUN_PY), run_name="__main__")  # bad input exits here with run.py's status 2
    task = sys.modules.get(TASK_MODULE)
    return exit_status(getattr(task, "BATCH_FAILURES", []))


if __name__ == "__main__":
    raise SystemExit(main())
