"""Numeric ranges attached to parameters, checked once in the config check before any work.

Annotate a constructor parameter as ``Annotated[float, Range(gt=0)]`` and a bad value in YAML or on the
command line stops the run in one line naming the key, for every task, with no per-task code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """Bounds for a number (None = unbounded); NaN and infinities are never in range; `allow` lists
    special values accepted as they are (e.g. -1 for "no limit")."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    allow: tuple[Any, ...] = ()

    def violation(self, value: Any) -> str | None:
        """Why `value` is out of range, or None when it is fine (non-numbers are the type check's job)."""
        if value in self.allow or isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        for bound, ok, word in (
            (self.ge, lambda b: value >= b, ">="),
            (self.gt, lambda b: value > b, ">"),
            (self.le, lambda b: value <= b, "<="),
            (self.lt, lambda b: value < b, "<"),
        ):
            if bound is not None and not ok(bound):
                return f"must be {word} {bound:g}"
        return None
