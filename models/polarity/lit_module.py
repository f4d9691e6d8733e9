"""LightningModule that trains one network or a population of networks and keeps every run's
validation curve, from which the paper's metrics are computed after the fit."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.polarity.freeze_sgd import SignConstraint


class PolarityLitModule(pl.LightningModule):
    """Classifier training with optional Freeze-SGD constraints.

    network      a single net (x (B, ...) -> logits (B, K)) or a population (`population = True`;
                 x (R, B, ...) -> logits (R, B, K)); K = 1 means binary with BCE, else cross-entropy
    data_index   for a population: which data slice (seed) of the batch each run trains on
    run_labels   condition name of each run, for per-condition logging
    history_len  epochs to keep curves for (= max_epochs); curves are buffers, so they are saved
                 in checkpoints and come back from spawned DDP processes
    """

    def __init__(
        self,
        network: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        constraints: Sequence[SignConstraint] = (),
        run_labels: Sequence[str] = ("run",),
        data_index: Sequence[int] | None = None,
        history_len: int = 100,
    ) -> None:
        super().__init__()
        self.network = network
        self.optimizer_factory = optimizer
        self.constraints = nn.ModuleList(constraints)
        self.run_labels = list(run_labels)
        self.population = getattr(network, "population", False)
        runs = len(self.run_labels)
        if self.population:
            index = list(data_index) if data_index is not None else list(range(runs))
            self.register_buffer("data_index", torch.tensor(index, dtype=torch.long), persistent=False)
        self.register_buffer("val_loss_history", torch.full((history_len, runs), float("nan")))
        self.register_buffer("val_acc_history", torch.full((history_len, runs), float("nan")))
        self._val_sums: Tensor | None = None

    # -- the loss of every run -------------------------------------------------------------------
    def per_run(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Per-run summed loss, number correct and number of examples in this batch, each (R,)."""
        x, y = batch
        if self.population:
            x, y = x[self.data_index], y[self.data_index]
            logits = self.network(x)
        else:
            logits, y = self.network(x).unsqueeze(0), y.unsqueeze(0)
        if logits.shape[-1] == 1:
            logits = logits.squeeze(-1)
            target = y.to(logits.dtype)
            loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            correct = ((logits > 0) == (target > 0.5)).float()
        else:
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y).float()
            correct = (logits.argmax(-1) == y).float()
        count = torch.full((loss.shape[0],), float(loss.shape[1]), device=loss.device)
        return loss.sum(1), correct.sum(1), count

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss_sum, correct, count = self.per_run(batch)
        per_run_mean = loss_sum / count
        self.log("train/loss", per_run_mean.mean(), on_step=False, on_epoch=True, batch_size=int(count[0]))
        self.log("train/acc", (correct / count).mean(), on_step=False, on_epoch=True, batch_size=int(count[0]))
        return per_run_mean.sum()  # each run's gradient is its own mean loss's gradient

    # -- validation curves ------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(3, len(self.run_labels), device=self.device)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss_sum, correct, count = self.per_run(batch)
        self._val_sums += torch.stack([loss_sum.detach(), correct, count])

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")
        loss, acc = sums[0] / sums[2], sums[1] / sums[2]
        epoch = self.current_epoch
        if epoch < self.val_loss_history.shape[0]:
            self.val_loss_history[epoch] = loss
            self.val_acc_history[epoch] = acc
        self.log("val/loss", loss.mean(), sync_dist=False)
        self.log("val/acc", acc.mean(), sync_dist=False, prog_bar=True)
        for label in dict.fromkeys(self.run_labels):
            mask = torch.tensor([lab == label for lab in self.run_labels], device=acc.device)
            self.log(f"{label}/val_acc_median", acc[mask].median(), sync_dist=False)
            self.log(f"{label}/val_loss_median", loss[mask].median(), sync_dist=False)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Resume into a run with a different max_epochs: pad or cut the saved curves to this length."""
        state = checkpoint["state_dict"]
        for key in ("val_loss_history", "val_acc_history"):
            saved, current = state[key], getattr(self, key)
            resized = torch.full_like(current, float("nan"))
            epochs = min(saved.shape[0], current.shape[0])
            resized[:epochs] = saved[:epochs]
            state[key] = resized

    def curves(self) -> tuple[np.ndarray, np.ndarray]:
        """Validation (loss, accuracy) histories, shape (epochs, runs), NaN for epochs not run."""
        return self.val_loss_history.cpu().numpy(), self.val_acc_history.cpu().numpy()

    # -- optimisation -------------------------------------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer = self.optimizer_factory(self.network.parameters())
        for constraint in self.constraints:
            constraint.attach(optimizer, self.network)
        return optimizer
