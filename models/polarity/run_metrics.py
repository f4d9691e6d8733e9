"""The paper's per-run metrics, computed from validation curves (Sec. 3, "Metrics")."""

from __future__ import annotations

import math

import numpy as np


def run_metrics(val_loss: np.ndarray, val_acc: np.ndarray, cutoff: float, max_epochs: int | None = None) -> dict[str, float]:
    """Metrics of one run from its per-epoch validation loss and accuracy (epochs counted from 1).

    val_error               error at the FIRST epoch of minimum validation loss (the paper's headline)
    best_epoch              that epoch
    epochs_to_cutoff        first epoch whose accuracy is strictly above `cutoff` (the reference's `>`);
                            a run that never gets there is censored at `max_epochs + 1`, so medians and
                            tests keep it instead of dropping it (survivorship)
    epochs_to_cutoff_reached the same, NaN for runs that never reach the cutoff (the old, uncensored value)
    reached_cutoff          1.0 if it did, else 0.0
    best_val_acc            highest accuracy over all epochs (used for the non-negative cap)
    final_val_error         error after the last epoch

    `max_epochs` defaults to the curve's length (the module keeps one row per planned epoch).
    """
    censored = float((len(val_loss) if max_epochs is None else int(max_epochs)) + 1)
    done = ~np.isnan(val_loss)
    loss, acc = val_loss[done], val_acc[done]
    if loss.size == 0:
        nan = math.nan
        return {
            "val_error": nan,
            "best_epoch": nan,
            "epochs_to_cutoff": nan,
            "epochs_to_cutoff_reached": nan,
            "reached_cutoff": 0.0,
            "best_val_acc": nan,
            "final_val_error": nan,
        }
    best = int(np.argmin(loss))  # argmin returns the first of tied minima
    reached = np.nonzero(acc > cutoff)[0]
    first = float(reached[0] + 1) if reached.size else math.nan
    return {
        "val_error": float(1.0 - acc[best]),
        "best_epoch": float(best + 1),
        "epochs_to_cutoff": first if reached.size else censored,
        "epochs_to_cutoff_reached": first,
        "reached_cutoff": float(reached.size > 0),
        "best_val_acc": float(acc.max()),
        "final_val_error": float(1.0 - acc[-1]),
    }
