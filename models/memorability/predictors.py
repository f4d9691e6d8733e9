"""Memorability predictors behind one interface: ResMem on frames, ridge and a Lightning regressor on features.

The paper scores crops with CLIP features + Bayesian ridge trained on Memento10k; CLIP weights and
Memento10k videos are not offline, so frames are scored by ResMem (an image memorability model with
published weights) and the trained regressors are fit on caption features, where ground truth exists.
A video's score is the mean of its sampled frames' scores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from common.errors import UserError


def spearman(prediction: np.ndarray, target: np.ndarray) -> float:
    """Spearman rank correlation (ties get average ranks); NaN when either side is constant."""
    prediction, target = np.asarray(prediction, float).ravel(), np.asarray(target, float).ravel()
    if len(prediction) != len(target):
        raise ValueError(f"spearman: {len(prediction)} predictions vs {len(target)} targets")
    if len(prediction) < 2 or np.ptp(prediction) == 0 or np.ptp(target) == 0:
        return float("nan")
    return float(spearmanr(prediction, target).statistic)


class MemorabilityPredictor(ABC):
    """Inputs (frames or feature rows) -> memorability scores, one per input."""

    name: str = "predictor"

    @abstractmethod
    def predict(self, inputs) -> np.ndarray: ...

    def score_video(self, frames: Sequence[np.ndarray]) -> float:
        """A clip's memorability: the mean over its sampled frames."""
        return float(np.mean(self.predict(list(frames))))


class ResMemPredictor(MemorabilityPredictor):
    """ResMem on BGR frames, in batches; `embed` gives the 256-d features a regressor can use."""

    name = "resmem"

    def __init__(
        self, checkpoint: str | None = None, batch_size: int = 8, device: str = "cpu", threads: int | None = None
    ) -> None:
        from models.memorability.resmem import load_resmem

        if threads:
            torch.set_num_threads(int(threads))
        self.model = load_resmem(checkpoint).to(device)
        self.batch_size, self.device = int(batch_size), device

    def _run(self, frames: Sequence[np.ndarray], embed: bool) -> np.ndarray:
        from models.memorability.resmem import preprocess

        if not frames:
            raise ValueError("no frames to score")
        out = []
        with torch.inference_mode():
            for start in range(0, len(frames), self.batch_size):
                batch = preprocess(list(frames[start : start + self.batch_size])).to(self.device)
                out.append((self.model.embed(batch) if embed else self.model(batch)[:, 0]).cpu().numpy())
        return np.concatenate(out)

    def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return self._run(inputs, embed=False)

    def embed(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        return self._run(frames, embed=True)


class RidgePredictor(MemorabilityPredictor):
    """Ridge regression with alpha chosen by K-fold CV over rows (one row per video, so the folds are
    grouped by video; pass `groups` when rows are captions of shared videos): the caption baseline."""

    name = "ridge"

    def __init__(self, alphas: Sequence[float] = (0.1, 0.3, 1, 3, 10, 30, 100), folds: int = 5, seed: int = 0) -> None:
        self.alphas, self.folds, self.seed = [float(a) for a in alphas], int(folds), int(seed)
        self.alpha: float | None = None
        self.model = None

    def fit(self, features: np.ndarray, targets: np.ndarray, groups: np.ndarray | None = None) -> RidgePredictor:
        from sklearn.linear_model import Ridge
        from sklearn.model_selection import GroupKFold

        groups = np.arange(len(features)) if groups is None else np.asarray(groups)
        folds = GroupKFold(n_splits=min(self.folds, len(np.unique(groups))))
        scores = {}
        for alpha in self.alphas:
            fold_scores = []
            for train, val in folds.split(features, targets, groups):
                model = Ridge(alpha=alpha).fit(features[train], targets[train])
                fold_scores.append(spearman(model.predict(features[val]), targets[val]))
            scores[alpha] = float(np.nanmean(fold_scores))
        self.alpha = max(scores, key=scores.get)
        self.cv_spearman = scores[self.alpha]
        self.model = Ridge(alpha=self.alpha).fit(features, targets)
        return self

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("RidgePredictor.predict before fit")
        return self.model.predict(np.asarray(inputs))


class LitPredictor(MemorabilityPredictor):
    """A trained `MemorabilityRegressor` (LightningModule) used as a predictor on feature rows."""

    name = "regressor"

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> LitPredictor:
        from models.memorability.regressor import MemorabilityRegressor

        if not Path(path).is_file():
            raise UserError(f"{path}: no such regressor checkpoint; train one with experiment=memorability_train_captions")
        return cls(MemorabilityRegressor.load_from_checkpoint(str(path), map_location="cpu"))

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        self.module.eval()
        with torch.inference_mode():
            return self.module(torch.as_tensor(np.asarray(inputs), dtype=torch.float32)).cpu().numpy()
