"""Plain Python values for JSON: numpy and torch scalars become int/float/bool at the moment they are
recorded, so a float32 metric never makes `json.dumps` fail after all the compute is done."""

from __future__ import annotations

import math
from typing import Any


def plain_value(value: Any, key: str = "value") -> Any:
    """`value` as a JSON-able scalar (str, bool, int, float or None); NaN/inf stay floats (see `json_number`)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    item = getattr(value, "item", None)  # numpy scalars, 0-d arrays, one-element tensors
    if callable(item):
        try:
            value = item()
        except (ValueError, RuntimeError):
            raise TypeError(f"{key}: {type(value).__name__} with more than one element is not a scalar metric") from None
        if isinstance(value, (str, bool, int, float)):
            return value
    raise TypeError(f"{key}: {type(value).__name__} is not a scalar (str, bool, int or float)")


def json_number(value: Any) -> Any:
    """NaN/inf are not JSON: store them as null (aggregation reads null as missing)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def plain_record(record: dict[str, Any]) -> dict[str, Any]:
    return {str(key): plain_value(value, str(key)) for key, value in record.items()}
