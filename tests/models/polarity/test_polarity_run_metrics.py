"""The paper's per-run metrics on hand-made curves with known answers."""

from __future__ import annotations

import math

import numpy as np

from models.polarity.run_metrics import run_metrics

NAN = math.nan


def test_val_error_is_taken_at_the_first_minimum_loss_epoch_not_the_best_accuracy_or_max_loss() -> None:
    loss = np.array([0.9, 0.3, 0.5, 0.3, 1.2])  # minimum at epochs 2 and 4 (tie: the first), maximum at 5
    acc = np.array([0.50, 0.80, 0.95, 0.85, 0.60])  # best accuracy at epoch 3
    m = run_metrics(loss, acc, cutoff=0.9)
    assert m["best_epoch"] == 2.0
    assert math.isclose(m["val_error"], 0.20)
    assert math.isclose(m["final_val_error"], 0.40) and math.isclose(m["best_val_acc"], 0.95)


def test_epochs_to_cutoff_is_the_first_epoch_above_it_not_the_last() -> None:
    acc = np.array([0.5, 0.95, 0.85, 0.97, 0.99])  # crosses at epoch 2, dips, crosses again at 4
    m = run_metrics(np.ones(5), acc, cutoff=0.9)
    assert m["epochs_to_cutoff"] == 2.0 and m["epochs_to_cutoff_reached"] == 2.0 and m["reached_cutoff"] == 1.0


def test_the_cutoff_is_strict_as_in_the_reference() -> None:
    m = run_metrics(np.ones(3), np.array([0.5, 0.9, 0.91]), cutoff=0.9)
    assert m["epochs_to_cutoff"] == 3.0  # 0.9 itself does not count (reference: acc > cutoff)


def test_a_run_that_never_reaches_the_cutoff_is_censored_at_max_epochs_plus_one() -> None:
    acc = np.array([0.5, 0.6, 0.7, 0.8])
    m = run_metrics(np.ones(4), acc, cutoff=0.9)
    assert m["epochs_to_cutoff"] == 5.0 and m["reached_cutoff"] == 0.0
    assert math.isnan(m["epochs_to_cutoff_reached"])
    assert run_metrics(np.ones(4), acc, cutoff=0.9, max_epochs=100)["epochs_to_cutoff"] == 101.0


def test_epochs_not_run_are_ignored_but_still_count_for_censoring() -> None:
    loss = np.array([0.8, 0.4, NAN, NAN])  # a run stopped after 2 of 4 planned epochs
    acc = np.array([0.7, 0.8, NAN, NAN])
    m = run_metrics(loss, acc, cutoff=0.9)
    assert m["best_epoch"] == 2.0 and math.isclose(m["final_val_error"], 0.2)
    assert m["epochs_to_cutoff"] == 5.0


def test_a_run_without_any_validation_epoch_has_nan_metrics() -> None:
    m = run_metrics(np.full(3, NAN), np.full(3, NAN), cutoff=0.9)
    assert math.isnan(m["val_error"]) and m["reached_cutoff"] == 0.0
