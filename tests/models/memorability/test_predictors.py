"""Spearman on known cases; ridge and the Lightning regressor recover a known relation; tercile summary."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from models.memorability.pipeline import evenly_spaced, summarize_deltas, tercile_masks
from models.memorability.predictors import LitPredictor, RidgePredictor, spearman
from models.memorability.regressor import MemorabilityRegressor


def test_spearman_known_cases() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert abs(spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) - 8 / np.sqrt(95)) < 1e-12  # ties: average ranks
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_torchmetrics_spearman_in_the_module_agrees() -> None:
    from torchmetrics.regression import SpearmanCorrCoef

    metric = SpearmanCorrCoef()
    value = metric(torch.tensor([1.0, 2, 3, 4, 5]), torch.tensor([5.0, 6, 7, 8, 7.5]))
    assert abs(float(value) - spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7.5])) < 1e-5


def _linear_data(n: int = 600, d: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x @ rng.normal(size=d) * 0.05 + 0.8 + rng.normal(0, 0.02, n)).astype(np.float32)
    return x, y


def test_ridge_recovers_a_linear_relation_and_picks_alpha_by_cv() -> None:
    x, y = _linear_data()
    ridge = RidgePredictor(alphas=[0.01, 1, 1e6], folds=4).fit(x[:500], y[:500])
    assert ridge.alpha != 1e6  # the absurd penalty loses in CV
    assert spearman(ridge.predict(x[500:]), y[500:]) > 0.9


def test_regressor_learns_with_mse_and_reports_on_the_score_scale() -> None:
    x, y = _linear_data()
    module = MemorabilityRegressor(
        in_features=16, hidden=32, lr=1e-2, dropout=0.0, input_dropout=0.0, target_mean=float(y.mean()), target_std=float(y.std())
    )
    loader = DataLoader(TensorDataset(torch.from_numpy(x[:500]), torch.from_numpy(y[:500])), batch_size=64, shuffle=True)
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        max_epochs=15,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, loader)
    prediction = LitPredictor(module).predict(x[500:])
    assert spearman(prediction, y[500:]) > 0.9
    assert abs(prediction.mean() - y[500:].mean()) < 0.02  # un-standardised: scores, not z-scores


def test_terciles_and_deltas_known_answer() -> None:
    initial = np.array([0.9, 0.5, 0.7, 0.6])
    cropped = np.array([0.85, 0.6, 0.7, 0.6])
    low, high = tercile_masks(initial)
    assert low.tolist() == [False, True, False, False] and high.tolist() == [True, False, False, False]
    summary = summarize_deltas(initial, cropped)
    assert np.isclose(summary["delta_low_third_mean"], 0.1) and np.isclose(summary["delta_high_third_mean"], -0.05)
    assert np.isclose(summary["delta_mean"], 0.0125) and np.isclose(summary["score_mean"], 0.6875)
    assert evenly_spaced(10, 3) == [2, 4, 7] and evenly_spaced(2, 5) == [0, 1]
