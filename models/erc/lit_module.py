"""LightningModule for emotion recognition in conversation: trains any network with `loss_terms`.

Each validation pass evaluates two loaders, 0 = validation and 1 = test, and records per epoch the
accuracy, weighted F1 and per-class F1 (torchmetrics) of both. The task then reads the test figures at
the epoch chosen on validation weighted F1 (the honest number) and, labelled as such, the maximum
test weighted F1 over epochs that many ERC papers report (SDT has no validation split).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from models.erc.losses import masked_cross_entropy, weighted_total

STAGES = ("val", "test")


class ERCLitModule(L.LightningModule):
    def __init__(
        self,
        network: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        label_names: Sequence[str],
        class_weights: Sequence[float] | None = None,
        scheduler: Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler] | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.label_names = list(label_names)
        num_classes = len(self.label_names)
        self.register_buffer(
            "class_weight", torch.tensor(class_weights, dtype=torch.float) if class_weights else None, persistent=False
        )
        self.metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict(
                    {
                        "accuracy": MulticlassAccuracy(num_classes, average="micro"),
                        "weighted_f1": MulticlassF1Score(num_classes, average="weighted"),
                        "macro_f1": MulticlassF1Score(num_classes, average="macro"),
                        "class_f1": MulticlassF1Score(num_classes, average="none"),
                    }
                )
                for stage in STAGES
            }
        )
        self._loss_sums = {stage: [0.0, 0] for stage in STAGES}
        self.history: list[dict[str, float]] = []
        # per epoch and evaluation split: (dialogue id, position, label, prediction) of every utterance, so the
        # task can write the predictions of the epoch it selects
        self.predictions: list[dict[str, list[tuple[str, int, int, int]]]] = []
        self._epoch_predictions: dict[str, list[tuple[str, int, int, int]]] = {stage: [] for stage in STAGES}
        self._epoch_lr = float("nan")

    def forward(self, batch: dict[str, Any]):
        return self.network(batch["features"], batch["mask"], batch["speakers"])

    def compute_loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor], Any]:
        out = self(batch)
        terms = self.network.loss_terms(out, batch["labels"], batch["mask"], self.class_weight)
        return weighted_total(terms, self.network.loss_weights), terms, out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        total, terms, _ = self.compute_loss(batch)
        n = int(batch["mask"].sum())
        self.log("train/loss", total, batch_size=n, on_step=False, on_epoch=True)
        for name, value in terms.items():
            self.log(f"train/{name}", value, batch_size=n, on_step=False, on_epoch=True)
        return total

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        stage = STAGES[dataloader_idx]
        out = self(batch)
        mask = batch["mask"]
        loss = masked_cross_entropy(out.logits, batch["labels"], mask, self.class_weight)
        n = int(mask.sum())
        self._loss_sums[stage][0] += float(loss) * n
        self._loss_sums[stage][1] += n
        preds, target = out.logits.argmax(-1)[mask], batch["labels"][mask]
        for metric in self.metrics[stage].values():
            metric.update(preds, target)
        positions = mask.nonzero().tolist()
        self._epoch_predictions[stage] += [
            (batch["ids"][b], t, int(y), int(p)) for (b, t), y, p in zip(positions, target.tolist(), preds.tolist())
        ]

    def on_train_epoch_start(self) -> None:
        self._epoch_lr = float(self.trainer.optimizers[0].param_groups[0]["lr"])

    def on_validation_epoch_end(self) -> None:
        row: dict[str, float] = {"epoch": float(self.current_epoch)}
        for stage in STAGES:
            total, count = self._loss_sums[stage]
            self._loss_sums[stage] = [0.0, 0]
            if count == 0:
                continue
            metrics = self.metrics[stage]
            row[f"{stage}_loss"] = total / count
            row[f"{stage}_accuracy"] = float(metrics["accuracy"].compute())
            row[f"{stage}_weighted_f1"] = float(metrics["weighted_f1"].compute())
            row[f"{stage}_macro_f1"] = float(metrics["macro_f1"].compute())
            for name, value in zip(self.label_names, metrics["class_f1"].compute().tolist()):
                row[f"{stage}_f1_{name}"] = float(value)
            for metric in metrics.values():
                metric.reset()
        predictions, self._epoch_predictions = self._epoch_predictions, {stage: [] for stage in STAGES}
        if self.trainer.sanity_checking:
            return
        row["train_lr"] = self._epoch_lr  # read at the epoch's start: an epoch scheduler steps before validation ends
        self.log_dict({f"{k.split('_', 1)[0]}/{k.split('_', 1)[1]}": v for k, v in row.items() if k != "epoch"}, on_epoch=True)
        self.history.append(row)
        self.predictions.append(predictions)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["erc_history"] = list(self.history)  # a resumed fit keeps its earlier epochs
        checkpoint["erc_predictions"] = list(self.predictions)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = list(checkpoint.get("erc_history", []))
        self.predictions = list(checkpoint.get("erc_predictions", [{}] * len(self.history)))

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.network.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"}}
