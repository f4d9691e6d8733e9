"""A quieter console: drop messages that carry no information for a run of this project, keep the rest.

Lightning advertises a cloud logger on every fit and says "srun is available but not used" on any machine
with SLURM installed; PyTorch warns about a pytree API that Lightning uses. None of it asks anything of
the user, and together it scrolls the results table away.
"""
from __future__ import annotations

import logging
import warnings

NOISE = ("litlogger", "srun` command is available", "is available on your system but is not used")


class DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in NOISE)


def install() -> None:
    warnings.filterwarnings("ignore", message=".*treespec.*")
    warnings.filterwarnings("ignore", message=".*pytree.*", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*srun.*is available.*")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero", "lightning.pytorch"):
        logging.getLogger(name).addFilter(DropNoise())
