"""The task contract: a task is ``run(cfg, ctx) -> TaskResult``, named by ``cfg.task.runner``.

What a task hands back is all the runner writes (metrics.json, results.md, records.jsonl), so a task
never touches those files itself. Records follow one typing rule that `experiments.analysis.aggregate`
relies on: str and int fields (not bool) are factors (group columns), float fields (or None) are metrics,
and any other field is neither; so a count meant as a metric is stored as a float.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from common.values import plain_record, plain_value


@dataclass
class TaskResult:
    """What a task returns: flat metrics, a Markdown results table, and one record per trained run.

    `exit_status` is the process's status once the results are written: 0, or 3 and above for a run that
    completed but must tell a script something went wrong (e.g. some inputs of a batch failed); 1 (a
    crash) and 2 (bad input, nothing written) keep their own meanings."""

    metrics: dict[str, float]
    table: str = ""
    records: list[dict[str, Any]] = field(default_factory=list)
    exit_status: int = 0

    def __post_init__(self) -> None:
        """numpy / torch scalars become plain numbers here, where the task hands them over, not at write time."""
        if not isinstance(self.exit_status, int) or not (self.exit_status == 0 or 3 <= self.exit_status <= 125):
            raise ValueError(f"TaskResult.exit_status={self.exit_status!r} must be 0 or in 3..125 (1 and 2 are taken)")
        self.metrics = {str(k): float(plain_value(v, str(k))) for k, v in self.metrics.items()}
        self.records = [plain_record(record) for record in self.records]


def job_seeds(cfg: DictConfig, count: int) -> list[int]:
    """The run seeds of one job: `task.num_seeds` consecutive seeds per job seed, so jobs with seeds
    0, 1, 2 of a sweep never share a run seed. `count` is the number to run (already bounded by
    `task.limit`)."""
    per_job = int(cfg.task.num_seeds)
    return [int(cfg.seed) * per_job + i for i in range(count)]
