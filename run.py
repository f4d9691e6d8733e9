"""The single entry point: `python run.py [group=option ...] [key=value ...]` (add -m to sweep).

Hydra composes conf/ into one config; the task named by cfg.task.runner does the work; the run dir
gets metrics.json, results.md, plots/ and checkpoints/. The return value is the sweep objective; the
exit status is 0, 2 for bad input (one line), or a completed run's own status (the largest over the
jobs run in this process), e.g. 3 when a memorability batch had videos that failed.
"""

# ruff: noqa: E402  (the imports below Hydra's start-up come after the --help check on purpose)
from __future__ import annotations

import sys

from experiments.core.cli_help import asks_for_help, print_help

if __name__ == "__main__" and asks_for_help(sys.argv[1:]):
    print_help(__doc__)  # listed from conf/: Hydra's --help composes the config once per group, after the imports below
    sys.exit(0)

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import experiments.core.provenance
import experiments.core.quiet
import experiments.core.resolvers  # noqa: F401  (registers ${wandb_offline:}, ${sweep_group:}, ${run_id:})
from experiments.core.cli_errors import call_with_one_line_errors, task_started
from experiments.core.runner import EXIT_STATUSES, final_exit_status, run_task

experiments.core.quiet.install()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    task_started()
    return run_task(cfg, Path(HydraConfig.get().runtime.output_dir))


def cli() -> int:
    """`python run.py` on sys.argv once imported: its exit status (0, 2 for bad input, or the largest
    TaskResult.exit_status of the runs, e.g. 3: some videos failed). Tests call it in-process."""
    if asks_for_help(sys.argv[1:]):
        print_help(__doc__)
        return 0
    experiments.core.provenance.remember_launch()  # a sweep's later jobs compare the tree on disk with this
    EXIT_STATUSES.clear()
    call_with_one_line_errors(main)
    return final_exit_status()


if __name__ == "__main__":
    sys.exit(cli())
