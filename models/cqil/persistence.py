"""Saving and loading a CQIL model: the weights under the original layer names, the settings in its config.

While CQIL is applied, a member's weights live under `layers.<slot>.members.<j>.` in the module tree.
`state_dict()` renames them back to `layers.<i>.` (and `load_state_dict` accepts those names), so
`save_pretrained` writes exactly the original checkpoint's keys and `from_pretrained` of the folder is
the untouched model with every weight loaded. The CQIL settings travel in `config.cqil`;
`load_cqil(path)` loads the folder and applies them, which gives the saved model's logits exactly.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from torch import nn

from common.errors import UserError


def _renames(spec) -> dict[str, str]:
    """`layers.<slot>.members.<j>.` -> `layers.<original index>.` for every member of every group."""
    return {f"layers.{group[0]}.members.{j}.": f"layers.{index}." for group in spec.groups() for j, index in enumerate(group)}


def _layer_key(key: str, prefix: str, table: dict[str, str]) -> str:
    if not key.startswith(prefix):
        return key
    rest = key[len(prefix) :]
    match = re.match(r"layers\.\d+\.(members\.\d+\.)?", rest)
    if match is None:
        return key
    head = match.group(0)
    return prefix + table.get(head, head) + rest[len(head) :]


def attach_original_names(model: nn.Module, decoder: nn.Module, spec, mode: str) -> None:
    """Called by `apply_cqil`: state_dict / load_state_dict use the original names; config.cqil = the settings."""
    renames = _renames(spec)
    originals = {v: k for k, v in renames.items()}

    def save_hook(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
        if getattr(module, "_cqil_released", False):
            raise UserError(
                "this CQIL model released the layers its rank does not compute (distributed mode), so it cannot be "
                "saved; save a model that holds every layer (sequential or fused mode)"
            )
        items = [(_layer_key(k, prefix, renames), v) for k, v in state_dict.items()]
        state_dict.clear()
        state_dict.update(items)

    def load_hook(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        items = [(_layer_key(k, prefix, originals), v) for k, v in state_dict.items()]
        state_dict.clear()
        state_dict.update(items)

    handles = [decoder.register_state_dict_post_hook(save_hook), decoder.register_load_state_dict_pre_hook(load_hook)]
    object.__setattr__(decoder, "_cqil_name_hooks", handles)
    config = getattr(model, "config", None)
    if config is not None:
        config.cqil = {**dataclasses.asdict(spec), "mode": mode}


def detach_original_names(model: nn.Module, decoder: nn.Module) -> None:
    for handle in getattr(decoder, "_cqil_name_hooks", []):
        handle.remove()
    if hasattr(decoder, "_cqil_name_hooks"):
        object.__delattr__(decoder, "_cqil_name_hooks")
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "cqil"):
        del config.cqil


def load_cqil(path: str | Path, mode: str | None = None, **from_pretrained: Any) -> nn.Module:
    """A CQIL model saved with `save_pretrained`, loaded with its settings (`mode` overrides the saved
    mode, e.g. `fused` for a model saved in `sequential`); keyword arguments go to `from_pretrained`."""
    from transformers import AutoModelForCausalLM

    from models.cqil.plugin import CQILSpec, apply_cqil

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise UserError(f"load_cqil: no saved model at {folder} (config.json missing)")
    model = AutoModelForCausalLM.from_pretrained(str(folder), **from_pretrained)
    settings = getattr(model.config, "cqil", None)
    if not isinstance(settings, dict):
        raise UserError(
            f"load_cqil: {folder}/config.json has no cqil settings (not saved from a CQIL model); "
            "load it with from_pretrained and call apply_cqil"
        )
    settings = dict(settings)
    saved_mode = settings.pop("mode", "sequential")
    fields = {f.name for f in dataclasses.fields(CQILSpec)}
    unknown = set(settings) - fields
    if unknown:
        raise UserError(f"load_cqil: {folder}/config.json cqil has unknown keys {sorted(unknown)}")
    del model.config.cqil
    apply_cqil(model, CQILSpec(**settings), mode=mode or saved_mode)
    return model.eval()
