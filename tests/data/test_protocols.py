"""Every data module a `conf/dataset/*.yaml` node instantiates keeps the data-module contract
(data.protocols), and its training loader never draws from torch's global generator."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import get_object
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from data.caption_features import CaptionDataModule
from data.conversations import ConversationDataModule, synthetic_corpus
from data.images import ImageDataModule
from data.protocols import DataModule, TrainingData, missing_members, protocol_members
from data.xor import XorDataModule

CONF_DATASET = Path(__file__).resolve().parents[2] / "conf" / "dataset"


def configured_data_modules() -> dict[str, type]:
    """`_target_` -> class, for every conf/dataset node whose target is a LightningDataModule class."""
    found = {}
    for path in sorted(CONF_DATASET.glob("*.yaml")):
        target = OmegaConf.load(path).get("_target_")
        if target is None:
            continue
        obj = get_object(target)
        if inspect.isclass(obj) and issubclass(obj, L.LightningDataModule):
            found[target] = obj
    return found


DATA_MODULES = configured_data_modules()


def test_the_dataset_configs_name_data_modules() -> None:
    assert DATA_MODULES, f"no LightningDataModule among the _target_s of {CONF_DATASET}/*.yaml"


@pytest.mark.parametrize("cls", DATA_MODULES.values(), ids=DATA_MODULES.keys())
def test_configured_data_modules_satisfy_the_protocol(cls: type) -> None:
    assert missing_members(cls, DataModule) == []
    # the polarity task names `polarity.source.dataset` in errors by passing config_key to the constructor
    assert "config_key" in inspect.signature(cls).parameters


def test_the_protocol_requires_what_the_tasks_use() -> None:
    assert protocol_members(TrainingData) == ["load_state_dict", "state_dict", "train_dataloader", "val_dataloader"]
    assert protocol_members(DataModule) == sorted([*protocol_members(TrainingData), "config_key", "network_kwargs", "setup"])


class _Complete(L.LightningDataModule):
    config_key = "dataset"

    @property
    def network_kwargs(self) -> dict[str, int]:
        return {"in_features": 1}

    def train_dataloader(self) -> DataLoader:
        return DataLoader([0.0])

    def val_dataloader(self) -> DataLoader:
        return DataLoader([0.0])


class _NoConfigKey(L.LightningDataModule):
    @property
    def network_kwargs(self) -> dict[str, int]:
        return {"in_features": 1}

    def train_dataloader(self) -> DataLoader:
        return DataLoader([0.0])

    def val_dataloader(self) -> DataLoader:
        return DataLoader([0.0])


def test_a_module_without_config_key_does_not_satisfy_the_protocol() -> None:
    assert missing_members(_Complete, DataModule) == [] and isinstance(_Complete(), DataModule)
    assert missing_members(_NoConfigKey, DataModule) == ["config_key"]
    assert missing_members(_NoConfigKey(), DataModule) == ["config_key"]
    assert not isinstance(_NoConfigKey(), DataModule)
    assert isinstance(_NoConfigKey(), TrainingData)  # enough for a module a task builds in code


def test_a_module_with_a_blocked_method_does_not_satisfy_the_protocol() -> None:
    blocked = type("Blocked", (_Complete,), {"train_dataloader": None})
    assert missing_members(blocked, DataModule) == ["train_dataloader"]


def test_the_memorability_module_satisfies_the_training_part() -> None:
    assert missing_members(CaptionDataModule, TrainingData) == []
    assert missing_members(caption_module(), TrainingData) == []


# ------------------------------------------------------------------------------------------ the shuffle rule
def caption_module() -> CaptionDataModule:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(12, 3, 4)).astype(np.float32)
    split = (features, np.ones((12, 3), bool), rng.uniform(size=12).astype(np.float32))
    return CaptionDataModule({"train": split, "val": split}, batch_size=4, seed=1)


# One small instance per data module class; a class a dataset config adds must add its own here.
SMALL_MODULES: dict[type, Callable[[Path], Any]] = {
    XorDataModule: lambda tmp: XorDataModule(seeds=(0, 1), n_train=12, n_val=8, batch_size=4),
    ImageDataModule: lambda tmp: ImageDataModule("digits", str(tmp), n_train=40, n_val=20, batch_size=8),
    ConversationDataModule: lambda tmp: ConversationDataModule(synthetic_corpus(num_dialogues=(8, 2, 2)), batch_size=2),
    CaptionDataModule: lambda tmp: caption_module(),
}


def test_every_configured_data_module_has_a_small_instance_here() -> None:
    assert set(DATA_MODULES.values()) <= set(SMALL_MODULES)


def draws_from_the_global_generator(module: Any) -> bool:
    """Whether building the training loader and running two epochs of it moves torch's global generator."""
    torch.manual_seed(123)
    before = torch.get_rng_state()
    loader = module.train_dataloader()
    for epoch in range(2):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)  # what Lightning does at each epoch's start
        assert list(loader), f"{type(module).__name__}.train_dataloader yielded no batch"
    return not torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("cls", SMALL_MODULES, ids=lambda cls: cls.__name__)
def test_training_loaders_never_draw_from_the_global_generator(cls: type, tmp_path: Path) -> None:
    module = SMALL_MODULES[cls](tmp_path)
    module.setup("fit")
    assert isinstance(module, DataModule if cls in DATA_MODULES.values() else TrainingData)
    assert not draws_from_the_global_generator(module)


def test_a_plain_shuffling_loader_is_caught() -> None:
    module = type("GlobalShuffle", (_Complete,), {"train_dataloader": lambda self: DataLoader(range(8), shuffle=True)})()
    assert draws_from_the_global_generator(module)
