"""What the Lightning-trained tasks require of a data module, written down as Protocols.

Two levels, because the tasks build their data modules in two ways:

* :class:`TrainingData`: everything `trainer.fit(module, datamodule=...)` and an exact resume need. The
  memorability task builds its `data.caption_features.CaptionDataModule` in code from arrays it has
  already split, so this is all it requires.
* :class:`DataModule`: a data module named by the `_target_` of a `conf/dataset/*.yaml` node and
  instantiated from it (the ERC and polarity tasks): also `config_key`, `setup` and `network_kwargs`.

Rules that a Protocol cannot express, but every data module keeps:

* The constructor's signature is the config's schema: `experiments.core.validation.config_check` checks
  each key of the dataset node against the parameters (names, annotated types) before anything runs,
  so every config key is a keyword parameter with a type annotation. `config_key` is one of them.
* The shuffle rule: a training loader draws its order (and any augmentation) from
  `data.samplers.shuffled` / `data.samplers.epoch_generator` (a function of (seed, epoch)) or from a
  `data.resumable.ResumableGenerators` generator (its state travels in the checkpoint), never from torch's
  global generator. Lightning builds the first loader of a resumed fit during set-up, so a draw from the
  global generator would shift every later random number, and a restarted private generator would
  repeat the first epoch's order: either way a resumed fit would stop matching an uninterrupted one.

The loop tasks have no data-module contract and are not held to these Protocols: recsys
(`data.ratings` loaders are plain functions returning a `RatingData` of arrays; the task's own
training loop samples them with a generator it seeds and saves itself) and cqil (`data.text_corpus`
gives fixed token windows for evaluation; nothing is trained on them through a loader).

`isinstance(module, DataModule)` works (the Protocols are runtime-checkable), but before Python 3.12 it
reads every property, and an image module's `network_kwargs` needs `setup()` first; `missing_members`
checks a class or an instance without reading anything.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from torch.utils.data import DataLoader


@runtime_checkable
class TrainingData(Protocol):
    """What `trainer.fit` and a resume from a checkpoint use."""

    def train_dataloader(self) -> DataLoader:
        """The training batches of one epoch, shuffled by the rule in this module's docstring."""
        ...

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Scored every epoch: the tasks choose epochs and report curves from validation metrics (the ERC
        module returns [validation, test] so test figures can be read at the epoch chosen on validation)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: the states of the module's training generators (ResumableGenerators;
        `{}` for a module whose order is a function of (seed, epoch))."""
        ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Called on a resume before the loaders are built, so their generators continue the saved streams."""
        ...


@runtime_checkable
class DataModule(TrainingData, Protocol):
    """A data module instantiated from a `conf/dataset/*.yaml` node (`_target_`) by a Lightning-trained task."""

    config_key: str
    """The config node the module was built from (`dataset`, or `polarity.source.dataset` for the polarity
    task's source network, passed as a constructor argument): errors about a value name its full key."""

    def setup(self, stage: str | None = None) -> None:
        """Reads the data unless that is done already (later calls do nothing): the polarity task calls
        `setup("fit")` itself, before `network_kwargs`, and Lightning calls it again inside `fit`."""
        ...

    @property
    def network_kwargs(self) -> Mapping[str, Any]:
        """The sizes a network needs to fit this data (input features or channels, classes, ...): the tasks
        build `model.network` with them, so a model config never repeats what the data determines."""
        ...


def protocol_members(protocol: type) -> list[str]:
    """The names `protocol` requires (its own and inherited), sorted."""
    names: set[str] = set()
    for base in protocol.__mro__:
        if base is Protocol or not getattr(base, "_is_protocol", False):
            continue
        namespace = vars(base)
        names.update(n for n in (*namespace, *namespace.get("__annotations__", {})) if not n.startswith("_"))
    return sorted(names)


_ABSENT = object()


def missing_members(target: Any, protocol: type = DataModule) -> list[str]:
    """The members of `protocol` that `target` (a class or an instance) lacks, found without calling any
    property. A method set to None counts as missing, as it does for `isinstance`."""
    missing = []
    for name in protocol_members(protocol):
        found = inspect.getattr_static(target, name, _ABSENT)
        required_method = any(inspect.isfunction(vars(base).get(name)) for base in protocol.__mro__)
        if found is _ABSENT or (required_method and found is None):
            missing.append(name)
    return missing
