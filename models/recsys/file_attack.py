"""Replay of saved fake profiles: the TCD authors' own poison files, injected as they are.

The TCD reference (greensun0830/TCD `run_main.py`) reads `temp/<data>/full/<attack>_poisoning_<first target>_
<fake users>_0.400000.npy`: a float array [fake users, items] of ratings divided by R (0 = unrated), and stacks
it under the training matrix. Its attack columns (random, average, AUSH, PGA, TNA) were computed from these
files, so replaying them tests the paper's claims on the paper's inputs rather than on re-generated profiles.
Here the stored values are multiplied by R (this code keeps ratings in rating units) and nothing else changes.

A file that cannot be the profiles of this data set and target set stops the run with one line naming the
file: another item count, values outside [0, 1], or a target that a profile leaves unrated (a push attack rates
every target in every profile; the other target set's popular items are often fillers of some profiles).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from common.errors import UserError

FILE_NAME = re.compile(r"^(?P<attack>.+?)_poisoning_")  # the reference's `<attack>_poisoning_...npy`


def attack_from_file_name(path: Path) -> str | None:
    """`PGA_poisoning_1018_28_0.400000.npy` -> "pga"; None when the name is not in the reference's form."""
    match = FILE_NAME.match(path.name)
    return match["attack"].lower() if match else None


def read_profiles(path: Path, n_items: int, targets: Tensor, max_rating: float) -> Tensor:
    """The [fake users, n_items] profiles of a saved `.npy` file in rating units, checked against the data set."""
    if not path.is_file():
        raise UserError(f"attack.path: {path} is not a file; give a saved profile array (.npy), absolute or under the data root")
    try:
        values = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{path}: not a numpy .npy array of profiles ({exc.__class__.__name__}: {exc})") from None
    if values.ndim != 2 or values.shape[0] == 0 or not np.issubdtype(values.dtype, np.number):
        raise UserError(f"{path}: expected a numeric [fake users, items] array, found shape {values.shape} of {values.dtype}")
    if values.shape[1] != n_items:
        raise UserError(f"{path}: {values.shape[1]} item columns, the data set has {n_items} items; profiles of another data set")
    outside = ~((values >= 0) & (values <= 1))  # NaN is outside too
    if outside.any():
        row, col = np.argwhere(outside)[0]
        raise UserError(
            f"{path}: value {values[row, col]:g} at (profile {row}, item {col}) is outside [0, 1]; "
            "the file must hold ratings divided by the rating maximum R (0 = unrated)"
        )
    unrated = (values[:, targets.numpy()] == 0).sum(0)  # per target: the profiles that leave it unrated
    if unrated.any():
        missing = {int(t): int(n) for t, n in zip(targets.tolist(), unrated) if n}
        raise UserError(
            f"{path}: target item(s) {list(missing)} of task.targets {targets.tolist()} are not rated by every profile "
            f"(unrated in {', '.join(map(str, missing.values()))} of {len(values)}); profiles made for another target "
            "set (the reference names a file by its first target)"
        )
    return torch.from_numpy(values * max_rating).float()


@dataclass
class FileAttack:
    """Fake profiles read from `root / path` (an absolute `path` is used as it is); `label` names the
    condition in the records, by default the attack parsed from the reference's file name."""

    path: str | None = None
    root: str = "."
    label: str | None = None
    injects: ClassVar[bool] = True

    @property
    def file(self) -> Path:
        if not self.path:
            raise UserError("attack=file needs attack.path=<.npy file of saved profiles> (absolute or under the data root)")
        return Path(self.root).expanduser() / Path(self.path).expanduser()

    @property
    def attack_name(self) -> str:
        name = self.label or attack_from_file_name(self.file)
        if not name:
            raise UserError(
                f"attack.path={self.path}: the attack cannot be read from the file name "
                "(expected '<attack>_poisoning_...npy'); name it with attack.label=<name>"
            )
        return name

    def profiles(self, n_items: int, targets: Tensor, max_rating: float) -> Tensor:
        """Every profile of the file (read once), in rating units."""
        if getattr(self, "_profiles", None) is None:  # a cache, not a config field
            self._profiles = read_profiles(self.file, n_items, torch.as_tensor(targets), max_rating)
        return self._profiles

    def generate(
        self, train: Tensor, targets: Tensor, n_fake: int, n_filler: int, max_rating: float, generator: torch.Generator
    ) -> Tensor:
        """The file's first `n_fake` profiles (all of them unless a debug limit bounds the count); draws nothing."""
        return self.profiles(train.shape[1], targets, max_rating)[:n_fake].clone()
