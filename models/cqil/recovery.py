"""Recovery fine-tuning of a CQIL (or layer-removed) model by LoRA + knowledge distillation.

Paper Sec. 5.1 / reference code: the student is the CQIL model with LoRA adapters (r 32, alpha 32
on q, k, v, o, gate, up, down of every layer); the teacher is the same weights with the adapters
and CQIL off; loss KL(teacher || student) on token logits at temperature T (1). Only the adapters
are trained, and only they go into the Lightning checkpoints (the base weights never change).

Saving (`save_recovered`): the CQIL groups hold the very layer objects of the original list, so once
CQIL (or the layer removal) is undone with the adapters still injected, PEFT's `save_pretrained` keys
them by the original layer names: `PeftModel.from_pretrained(plain_model, path)` loads them, and
`apply_layout` with the folder's `cqil_layout.json` puts the recovered layout back.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.files import atomic_write_dir
from models.cqil.analysis import layers_to_remove, remove_layers, restore_layers
from models.cqil.plugin import CQILSpec, apply_cqil, cqil_spec, decoder_of, remove_cqil

log = logging.getLogger(__name__)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SAVE_CHOICES = ("adapters", "merged", "none")
LAYOUT_FILE = "cqil_layout.json"


@contextlib.contextmanager
def original_layers(model: nn.Module) -> Iterator[None]:
    """Temporarily the untouched layer stack (CQIL off / removed layers back) for the teacher."""
    decoder = decoder_of(model)
    cqil = getattr(decoder, "_cqil_original_layers", None)
    removed = getattr(decoder, "_removed_original_layers", None)
    current = decoder.layers
    if removed is not None:
        layers, original_idx = removed
        current_idx = [layer.self_attn.layer_idx for layer in current]
        for layer, idx in zip(layers, original_idx):
            layer.self_attn.layer_idx = idx
        decoder.layers = layers
        try:
            yield
        finally:
            for layer, idx in zip(current, current_idx):
                layer.self_attn.layer_idx = idx
            decoder.layers = current
        return
    if cqil is not None:
        decoder.layers = cqil
    try:
        yield
    finally:
        decoder.layers = current


def kd_loss(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(teacher || student) per token, mean over tokens, times T^2 (Hinton et al.)."""
    s = F.log_softmax(student.float().flatten(0, -2) / temperature, -1)
    t = F.log_softmax(teacher.float().flatten(0, -2) / temperature, -1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


class KDRecoveryModule(pl.LightningModule):
    """Student = peft model (adapters on, CQIL / removal on); teacher = the same with both off."""

    def __init__(self, peft_model: nn.Module, lr: float = 1e-4, temperature: float = 1.0) -> None:
        super().__init__()
        self.peft_model = peft_model
        self.lr = lr
        self.temperature = temperature
        self.step_seconds: list[float] = []
        self._t0 = 0.0

    def teacher_logits(self, ids: Tensor) -> Tensor:
        with torch.no_grad(), self.peft_model.disable_adapter(), original_layers(self.peft_model.get_base_model()):
            return self.peft_model(input_ids=ids, use_cache=False).logits

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        ids = batch[0] if isinstance(batch, (list, tuple)) else batch
        self._t0 = time.perf_counter()
        teacher = self.teacher_logits(ids)
        student = self.peft_model(input_ids=ids, use_cache=False).logits
        loss = kd_loss(student, teacher, self.temperature)
        self.log("kd_loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.step_seconds.append(time.perf_counter() - self._t0)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.lr, weight_decay=0.0)

    # only the adapters are checkpointed: the frozen base is the checkpoint file the run loaded
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        return {k: v for k, v in super().state_dict(*args, **kwargs).items() if "lora_" in k}

    def load_state_dict(self, state_dict: dict[str, Tensor], strict: bool = True, assign: bool = False) -> Any:
        return super().load_state_dict(state_dict, strict=False)


def add_lora(model: nn.Module, rank: int, alpha: int) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=LORA_TARGETS, bias="none")
    return get_peft_model(model, config)


def recover(
    model: nn.Module,
    make_trainer: Callable[[str, int], tuple[Any, str | None]],
    fit_name: str,
    windows: Tensor,
    steps: int,
    batch_size: int,
    lr: float,
    rank: int,
    alpha: int,
    temperature: float = 1.0,
) -> tuple[nn.Module, KDRecoveryModule]:
    """Train LoRA adapters on `model` (CQIL / removal already applied) for `steps` steps; returns the
    peft model (call `.unload()` to get the plain model back) and the module (step times)."""
    for p in model.parameters():
        p.requires_grad_(False)
    peft_model = add_lora(model, rank, alpha)
    module = KDRecoveryModule(peft_model, lr, temperature)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(windows), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    trainer, ckpt = make_trainer(fit_name, steps)
    peft_model.train()
    trainer.fit(module, loader, ckpt_path=ckpt)
    peft_model.eval()
    return peft_model, module


@dataclass(frozen=True)
class RecoverySetting:
    """One model to recover: how to turn the plain model into it and back, the record's factors, and
    `layout`, the JSON description `apply_layout` rebuilds it from (saved beside the adapters)."""

    name: str
    apply: Callable[[nn.Module], Any]
    undo: Callable[[nn.Module], Any]
    factors: dict[str, Any]
    layout: dict[str, Any]


def recovery_settings(
    specs: list[CQILSpec], removal: bool, similarity: Tensor, saved: Callable[[CQILSpec], int]
) -> list[RecoverySetting]:
    """Each CQIL setting (applied exactly as given, `bypass_residual` included) and, when `removal`,
    its equal-latency removal baseline."""
    out = []
    for spec in specs:
        out.append(
            RecoverySetting(
                f"{spec.name}_lora",
                lambda m, s=spec: apply_cqil(m, s),
                remove_cqil,
                {"kind": "cqil_lora", "p": spec.parallel_degree, "s": spec.start, "e": spec.end, "d": spec.bypass_distance},
                {"cqil": dataclasses.asdict(spec)},
            )
        )
        if removal:
            k = saved(spec)
            dropped = layers_to_remove(similarity, k)
            out.append(
                RecoverySetting(
                    f"removed_{k}_lora",
                    lambda m, dropped=dropped: remove_layers(m, dropped),
                    restore_layers,
                    {"kind": "removed_lora", "removed": k},
                    {"removed_layers": dropped},
                )
            )
    return out


def apply_layout(model: nn.Module, layout: dict[str, Any]) -> None:
    """Put a saved layout back on `model` (the plain model, or the base model of a PeftModel): CQIL
    with the saved spec, or the saved layers removed."""
    if "cqil" in layout:
        apply_cqil(model, CQILSpec(**layout["cqil"]))
    elif "removed_layers" in layout:
        remove_layers(model, layout["removed_layers"])
    else:
        raise ValueError(f"not a CQIL layout: {layout}")


def adapted_layers(model: nn.Module) -> list[int]:
    """Indices in the decoder's current layer list of the layers that carry LoRA adapters."""
    from peft.tuners.lora import LoraLayer

    layers = decoder_of(model).layers
    return [i for i, layer in enumerate(layers) if any(isinstance(m, LoraLayer) for m in layer.modules())]


@contextlib.contextmanager
def only_adapted_layers(peft_model: nn.Module) -> Iterator[None]:
    """While saving, the adapter config names the layers that were trained (`layers_to_transform`):
    a removed layer got no adapter, and loading must not give it a fresh one (nor warn of its keys)."""
    config = peft_model.peft_config[peft_model.active_adapter]
    before, layers = config.layers_to_transform, adapted_layers(peft_model.get_base_model())
    if len(layers) < len(decoder_of(peft_model.get_base_model()).layers):
        config.layers_to_transform = layers
    try:
        yield
    finally:
        config.layers_to_transform = before


def save_recovered(peft_model: nn.Module, path: Path, how: str, layout: dict[str, Any]) -> Path:
    """Save recovered adapters for the plain model: `adapters` = the PEFT folder (keys under the
    original layer names), `merged` = the plain model with the adapters merged into a copy of its weights
    (save_pretrained; the live model is left as it is); `layout` goes beside them as cqil_layout.json.
    Call with CQIL / removal undone and the adapters still injected: while a layout is applied the
    keys would name CQIL groups or shifted layers."""
    if how not in SAVE_CHOICES[:2]:
        raise ValueError(f"save_recovered how={how!r}: one of {SAVE_CHOICES[:2]}")
    base = peft_model.get_base_model()
    if cqil_spec(base) is not None or hasattr(decoder_of(base), "_removed_original_layers"):
        raise RuntimeError("save_recovered: undo CQIL / the layer removal first, so the keys name the original layers")

    def write(tmp: Path) -> None:
        if how == "adapters":
            with only_adapted_layers(peft_model):
                peft_model.save_pretrained(str(tmp))
        else:
            copy.deepcopy(peft_model).merge_and_unload().save_pretrained(str(tmp))
        (tmp / LAYOUT_FILE).write_text(json.dumps(layout, indent=1) + "\n")

    return atomic_write_dir(path, write)
