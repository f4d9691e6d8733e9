"""LoRA + KD recovery: teacher = original (adapters and CQIL off), student = CQIL + adapters."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from models.cqil.analysis import remove_layers, restore_layers
from models.cqil.plugin import CQILSpec, apply_cqil, remove_cqil
from models.cqil.recovery import kd_loss, original_layers, recover
from tests.models.cqil.tiny import tiny_llama


def test_kd_loss_known_answers():
    logits = torch.randn(2, 3, 7)
    assert kd_loss(logits, logits).abs() < 1e-6
    s, t = torch.zeros(1, 1, 2), torch.tensor([[[0.0, 1.0]]])
    pt = torch.softmax(t[0, 0], -1)
    want = (pt * (pt.log() - torch.log(torch.tensor([0.5, 0.5])))).sum()
    assert torch.allclose(kd_loss(s, t), want, atol=1e-6)


@torch.no_grad()
def test_teacher_is_the_original_and_removal_is_restored():
    model = tiny_llama()
    ids = torch.randint(0, 97, (1, 8), generator=torch.Generator().manual_seed(0))
    base = model(ids).logits
    apply_cqil(model, CQILSpec(0, 4, 2))
    with original_layers(model):
        assert torch.equal(model(ids).logits, base)
    cqil = model(ids).logits
    assert not torch.allclose(cqil, base, atol=1e-3)
    remove_cqil(model)
    remove_layers(model, [2])
    removed = model(ids).logits
    with original_layers(model):
        assert torch.equal(model(ids).logits, base)
    assert torch.equal(model(ids).logits, removed)
    restore_layers(model)


def test_recovery_trains_adapters_only_and_unloads():
    model = tiny_llama()
    ids = torch.randint(0, 97, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model(ids).logits
    apply_cqil(model, CQILSpec(0, 4, 2))
    windows = torch.randint(0, 97, (4, 12), generator=torch.Generator().manual_seed(1))

    def make_trainer(name, steps):
        return pl.Trainer(
            max_steps=steps,
            max_epochs=-1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
        ), None

    peft_model, module = recover(model, make_trainer, "t", windows, steps=6, batch_size=2, lr=1e-2, rank=4, alpha=4)
    assert len(module.step_seconds) == 6
    keys = list(module.state_dict())
    assert keys and all("lora_" in k for k in keys)  # checkpoints carry the adapters only
    with torch.no_grad():
        teacher = module.teacher_logits(windows)
        student = peft_model(input_ids=windows).logits
        peft_model.disable_adapter_layers()
        plain = peft_model(input_ids=windows).logits
        peft_model.enable_adapter_layers()
    assert kd_loss(student, teacher) < kd_loss(plain, teacher)  # training moved the CQIL student toward the teacher
    peft_model.unload()
    remove_cqil(model)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, base, atol=1e-6)
