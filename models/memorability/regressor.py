"""A LightningModule regressing memorability from features (caption or frame embeddings).

Trained with MSE on the score, evaluated with Spearman rank correlation, MediaEval's metric. The
network is a linear read-out plus a small MLP residual: with ~5,600 training videos a pure MLP does not
beat ridge (measured on a random 20 % of videos: MLP 0.584 vs ridge 0.587); the linear path keeps ridge's inductive
bias, the MLP adds what is non-linear, and caption-subset augmentation (data/caption_features.py)
regularises it. Targets are standardised inside the module (`target_mean`, `target_std` are saved
with the checkpoint) so the loss scale does not depend on the data set's score range.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics.regression import SpearmanCorrCoef


class MemorabilityRegressor(L.LightningModule):
    def __init__(
        self,
        in_features: int = 384,
        hidden: int = 256,
        dropout: float = 0.3,
        input_dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        target_mean: float = 0.0,
        target_std: float = 1.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.input_dropout = nn.Dropout(input_dropout)
        self.linear = nn.Linear(in_features, 1)
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))
        self.val_spearman, self.test_spearman = SpearmanCorrCoef(), SpearmanCorrCoef()

    @torch.no_grad()
    def init_linear(self, coef, intercept: float) -> None:
        """Start from a fitted linear model (ridge: y = coef . x + intercept) with the MLP's output at zero,
        so training begins at the baseline and the MLP only learns what the linear model misses."""
        std, mean = self.hparams.target_std, self.hparams.target_mean
        self.linear.weight.copy_(torch.as_tensor(coef, dtype=torch.float32).reshape(1, -1) / std)
        self.linear.bias.fill_((float(intercept) - mean) / std)
        self.mlp[-1].weight.zero_()
        self.mlp[-1].bias.zero_()

    def standardized(self, x: Tensor) -> Tensor:
        x = self.input_dropout(x)
        return (self.linear(x) + self.mlp(x)).squeeze(-1)

    def forward(self, x: Tensor) -> Tensor:
        """Scores on the data set's own scale."""
        return self.standardized(x) * self.hparams.target_std + self.hparams.target_mean

    def _loss(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, y = batch
        prediction = self.standardized(x)
        target = (y - self.hparams.target_mean) / self.hparams.target_std
        return nn.functional.mse_loss(prediction, target), prediction

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, _ = self._loss(batch)
        self.log("train/mse", loss, on_step=False, on_epoch=True, batch_size=len(batch[1]))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, prediction = self._loss(batch)
        self.val_spearman.update(prediction, batch[1])
        self.log("val/mse", loss, on_epoch=True, batch_size=len(batch[1]))
        self.log("val/spearman", self.val_spearman, on_epoch=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, prediction = self._loss(batch)
        self.test_spearman.update(prediction, batch[1])
        self.log("test/mse", loss, on_epoch=True, batch_size=len(batch[1]))
        self.log("test/spearman", self.test_spearman, on_epoch=True)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, self.trainer.max_epochs or 1))
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
