"""Training generators whose states travel with a checkpoint.

A data module that shuffles (or augments) with a private `torch.Generator` continues that generator's
stream epoch after epoch. A fit resumed from a checkpoint builds its loaders afresh, so without the
saved state its resumed epochs would see the first epoch's order again. Lightning stores a data
module's `state_dict()` in every checkpoint and hands it back to `load_state_dict()` on a resume, before
the loaders are built; this mixin uses those two hooks, so the stream (and the results) of an
uninterrupted fit are unchanged and a resumed fit continues it exactly.
"""

from __future__ import annotations

from typing import Any

import torch


class ResumableGenerators:
    """Mixin for a `LightningDataModule`: `resumable_generator(name, seed)` in place of a seeded generator."""

    def _generator_registry(self) -> tuple[dict[str, torch.Generator], dict[str, torch.Tensor]]:
        if not hasattr(self, "_live_generators"):
            self._live_generators: dict[str, torch.Generator] = {}
            self._states_to_resume: dict[str, torch.Tensor] = {}
        return self._live_generators, self._states_to_resume

    def resumable_generator(self, name: str, seed: int) -> torch.Generator:
        """A generator seeded with `seed`, or continuing the stream a loaded checkpoint saved under `name`."""
        live, to_resume = self._generator_registry()
        generator = torch.Generator().manual_seed(int(seed))
        if name in to_resume:
            generator.set_state(to_resume.pop(name))
        live[name] = generator
        return generator

    def state_dict(self) -> dict[str, Any]:
        live, _ = self._generator_registry()
        return {"generators": {name: generator.get_state() for name, generator in live.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _, to_resume = self._generator_registry()
        to_resume.update(state_dict.get("generators", {}))
