"""The one Markdown table writer every results table goes through, so escaping and layout agree."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def markdown_table(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table; cells are `str()`-ed and a `|` inside a cell is escaped so columns stay aligned."""

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    header = list(header)
    return "\n".join([line(header), "|" + "---|" * len(header), *(line(row) for row in rows)])
