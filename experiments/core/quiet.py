"""A quieter console: drop messages that carry no information for a run of this project, keep the rest.

Lightning advertises a cloud logger on every fit and says "srun is available but not used" on any machine
with SLURM installed; PyTorch warns about a pytree API that Lightning uses. None of it asks anything of
the user, and together it scrolls the results table away.
"""

from __future__ import annotations

import logging
import os
import warnings

NOISE = ("litlogger", "litmodels", "💡 Tip", "srun` command is available", "is available on your system but is not used")


class DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in NOISE)


def install() -> None:
    os.environ.setdefault("WANDB_QUIET", "true")  # W&B keeps its warnings, drops the run-history dump after the table
    warnings.filterwarnings("ignore", message=".*treespec.*")
    warnings.filterwarnings("ignore", message=".*pytree.*", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*srun.*is available.*")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero", "lightning.pytorch"):
        logging.getLogger(name).addFilter(DropNoise())


def one_console_handler() -> None:
    """Lightning adds its own console handler when it is imported before logging is configured; Hydra's
    handlers already print (and file) every record, so each line would appear twice on the console."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True
