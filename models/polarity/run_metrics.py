"""The paper's per-run metrics, computed from validation curves (Sec. 3, "Metrics")."""
from __future__ import annotations

import math

import numpy as np


def run_metrics(val_loss: np.ndarray, val_acc: np.ndarray, cutoff: float) -> dict[str, float]:
    """Metrics of one run from its per-epoch validation loss and accuracy (epochs counted from 1).

    val_error        error at the epoch of minimum validation loss (the paper's headline)
    best_epoch       that epoch
    epochs_to_cutoff first epoch whose accuracy reaches `cutoff` (NaN if never)
    reached_cutoff   1.0 if it did, else 0.0
    best_val_acc     highest accuracy over all epochs (used for the non-negative cap)
    final_val_error  error after the last epoch
    """
    done = ~np.isnan(val_loss)
    loss, acc = val_loss[done], val_acc[done]
    if loss.size == 0:
        nan = math.nan
        return {"val_error": nan, "best_epoch": nan, "epochs_to_cutoff": nan, "reached_cutoff": 0.0,
                "best_val_acc": nan, "final_val_error": nan}
    best = int(np.argmin(loss))
    reached = np.nonzero(acc >= cutoff)[0]
    return {
        "val_error": float(1.0 - acc[best]),
        "best_epoch": float(best + 1),
        "epochs_to_cutoff": float(reached[0] + 1) if reached.size else math.nan,
        "reached_cutoff": float(reached.size > 0),
        "best_val_acc": float(acc.max()),
        "final_val_error": float(1.0 - acc[-1]),
    }
