"""LoRA + KD recovery: teacher = original (adapters and CQIL off), student = CQIL + adapters; the
recovered adapters saved for the plain model."""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from models.cqil.analysis import remove_layers, restore_layers
from models.cqil.plugin import CQILSpec, apply_cqil, remove_cqil
from models.cqil.recovery import (
    LAYOUT_FILE,
    RecoverySetting,
    add_lora,
    apply_layout,
    kd_loss,
    original_layers,
    recover,
    recovery_settings,
    save_recovered,
)
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

    peft_model, module = recover(model, quiet_trainer, "t", windows, steps=6, batch_size=2, lr=1e-2, rank=4, alpha=4)
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


def quiet_trainer(name: str, steps: int) -> tuple[pl.Trainer, None]:
    return pl.Trainer(
        max_steps=steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    ), None


@dataclass
class Recovered:
    """A tiny LLaMA recovered in one layout, saved both ways: what the saving tests read."""

    setting: RecoverySetting
    ids: torch.Tensor
    base_logits: torch.Tensor  # the untouched model
    recovered_logits: torch.Tensor  # layout + adapters, as scored after recovery
    layout_logits: torch.Tensor  # layout without adapters
    after_logits: torch.Tensor  # the live model after saving and unloading
    adapters: Path
    merged: Path


@pytest.fixture(scope="module", params=["cqil", "removal"])
def recovered(request, tmp_path_factory) -> Recovered:
    """Recover a few steps on random token windows in a CQIL layout (D = 1, bypass to the MLP only, so a
    spec that lost `bypass_residual` would compute something else) or with layer 2 removed; then undo
    the layout with the adapters still injected, save adapters and merged model, unload."""
    model = tiny_llama()
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(2))
    windows = torch.randint(0, 97, (4, 12), generator=torch.Generator().manual_seed(1))
    spec = CQILSpec(0, 4, 2, bypass_distance=1, bypass_residual=False)
    similarity = torch.eye(5) if request.param == "cqil" else torch.tensor([0.9, 0.8, 0.99, 0.7, 0.5]).repeat(5, 1)
    settings = recovery_settings([spec], request.param == "removal", similarity, lambda s: 1)
    setting = settings[0] if request.param == "cqil" else settings[1]
    with torch.no_grad():
        base = model(ids).logits
        setting.apply(model)
        layout = model(ids).logits
    peft_model, _ = recover(model, quiet_trainer, "t", windows, steps=3, batch_size=2, lr=1e-2, rank=4, alpha=4)
    with torch.no_grad():
        recovered_logits = peft_model(input_ids=ids).logits
    setting.undo(model)
    out = tmp_path_factory.mktemp(request.param)
    adapters = save_recovered(peft_model, out / "adapters", "adapters", setting.layout)
    merged = save_recovered(peft_model, out / "merged", "merged", setting.layout)
    peft_model.unload()
    with torch.no_grad():
        after = model(ids).logits
    return Recovered(setting, ids, base, recovered_logits, layout, after, adapters, merged)


def test_saved_adapters_are_keyed_by_the_original_layer_names(recovered: Recovered) -> None:
    keys = list(load_file(recovered.adapters / "adapter_model.safetensors"))
    assert keys and not any("members" in k for k in keys)
    pattern = re.compile(r"base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.\w+_proj\.lora_[AB]\.weight")
    assert all(pattern.fullmatch(k) for k in keys), keys
    layers = {int(pattern.fullmatch(k).group(1)) for k in keys}
    removed = set(recovered.setting.layout.get("removed_layers", []))
    assert layers == set(range(4)) - removed  # removed layers were never trained, the kept ones keep their index
    assert json.loads((recovered.adapters / LAYOUT_FILE).read_text()) == recovered.setting.layout
    config = json.loads((recovered.adapters / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == (sorted(layers) if removed else None)  # loading adapts the trained layers only


@torch.no_grad()
def test_adapters_load_onto_the_plain_model_and_reproduce_the_recovered_model(recovered: Recovered) -> None:
    """PeftModel.from_pretrained on a fresh plain model, then the saved layout: the recovered logits."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = PeftModel.from_pretrained(tiny_llama(), str(recovered.adapters))
    assert not [w for w in caught if "adapter keys" in str(w.message)]  # none missing, none unexpected
    layout = json.loads((recovered.adapters / LAYOUT_FILE).read_text())
    apply_layout(loaded.get_base_model(), layout)
    logits = loaded(input_ids=recovered.ids).logits
    assert torch.allclose(logits, recovered.recovered_logits, atol=1e-6)
    assert not torch.allclose(logits, recovered.layout_logits, atol=1e-3)  # the adapters do change the model


@torch.no_grad()
def test_merged_model_reloads_to_the_adapter_logits(recovered: Recovered) -> None:
    merged = LlamaForCausalLM.from_pretrained(str(recovered.merged)).eval()
    apply_layout(merged, json.loads((recovered.merged / LAYOUT_FILE).read_text()))
    assert torch.allclose(merged(recovered.ids).logits, recovered.recovered_logits, atol=1e-4)
    assert not list(recovered.merged.glob("adapter_*"))  # merged: a plain checkpoint, no adapters


def test_saving_leaves_the_live_model_untouched(recovered: Recovered) -> None:
    """Merging works on a copy: after saving and unloading, the model scored next is the original."""
    assert torch.equal(recovered.after_logits, recovered.base_logits)


def test_saving_refuses_while_the_layout_is_applied(tmp_path: Path) -> None:
    model = tiny_llama()
    apply_cqil(model, CQILSpec(0, 4, 2))
    peft_model = add_lora(model, 4, 4)
    with pytest.raises(RuntimeError, match="undo CQIL"):
        save_recovered(peft_model, tmp_path / "a", "adapters", {"cqil": {}})
    assert not (tmp_path / "a").exists()
