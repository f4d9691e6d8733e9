"""Reading what a memorability run wrote, the same way in every test."""

from __future__ import annotations

import csv
from pathlib import Path


def csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header, as dicts of strings."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
