"""Per-video CSV logs that make a batch over a folder resumable and let it survive broken files.

`scores.csv` gets one row per video, appended (and flushed to disk) only after everything else of that
video was written: a video's row is its commit mark. A killed run, rerun in the same run dir, skips the
videos with a row and ends with the same rows as a run that was never stopped; the other logs written
per video (boxes, control boxes, timings, exports) are cut back on resume to the videos with a row, so
the video that was being processed when the run died is done again, once. A row torn by the kill (no
line end) is dropped. `failures.csv` records a video that could not be processed, with its error, and the
batch goes on; a rerun tries recorded failures again (a file may have been replaced, a disk emptied), so
they are recorded anew, in the same order.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.files import atomic_write_text

FAILURE_COLUMNS = ["path", "clip", "error_type", "error"]
BOX_COLUMNS = ["clip", "crop", "frame", "x", "y", "w", "h"]
CONTROL_BOX_COLUMNS = ["clip", "crop", "control", "draw", "frame", "x", "y", "w", "h"]
EXPORT_COLUMNS = ["path", "clip", "crop", "file", "codec", "audio", "frames", "fps"]


def one_line(error: BaseException) -> str:
    """An error as one line (its type when it has no message), for failures.csv and the log."""
    text = " ".join(str(error).split())
    return text or error.__class__.__name__


class CsvLog:
    """A CSV file appended in whole rows: each `append` is one write, flushed and synced, so a kill leaves
    at most one torn last line (dropped when the file is read). The header is written with the first rows;
    a file whose header differs from `columns` was written under another config and is refused."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path, self.columns = Path(path), list(columns)

    def _text(self) -> str:
        if not self.path.is_file():
            return ""
        text = self.path.read_text()
        return text[: text.rfind("\n") + 1]  # a torn last row (no line end) is not a row

    def rows(self) -> list[dict[str, str]]:
        text = self._text()
        if not text:
            return []
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames != self.columns:
            raise UserError(
                f"{self.path} has the columns {','.join(reader.fieldnames or [])}, but this run writes "
                f"{','.join(self.columns)}: it was written under another config; use another hydra.run.dir, "
                "or ckpt_path=none to start this one afresh"
            )
        return list(reader)

    def _format(self, rows: Iterable[Mapping[str, Any]], header: bool) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n")
        if header:
            writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.is_file() or self.path.stat().st_size == 0
        with open(self.path, "a", newline="") as handle:
            handle.write(self._format(rows, header=fresh))
            handle.flush()
            os.fsync(handle.fileno())

    def keep(self, wanted: Callable[[dict[str, str]], bool]) -> None:
        """Rewrite the file (atomically) with only the rows `wanted` accepts; a torn last row goes too."""
        if not self.path.is_file():
            return
        rows = self.rows()
        kept = [row for row in rows if wanted(row)]
        if len(kept) != len(rows) or self._text() != self.path.read_text():
            atomic_write_text(self.path, self._format(kept, header=True))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class Ledger:
    """The per-video logs of one run dir's artifacts/ folder."""

    scores: CsvLog
    failures: CsvLog
    boxes: CsvLog
    control_boxes: CsvLog
    timings: CsvLog
    exports: CsvLog

    @classmethod
    def in_folder(cls, folder: Path, score_columns: list[str], timing_columns: list[str]) -> Ledger:
        return cls(
            CsvLog(folder / "scores.csv", score_columns),
            CsvLog(folder / "failures.csv", FAILURE_COLUMNS),
            CsvLog(folder / "boxes.csv", BOX_COLUMNS),
            CsvLog(folder / "control_boxes.csv", CONTROL_BOX_COLUMNS),
            CsvLog(folder / "timings.csv", timing_columns),
            CsvLog(folder / "exports.csv", EXPORT_COLUMNS),
        )

    @property
    def logs(self) -> list[CsvLog]:
        return [self.scores, self.failures, self.boxes, self.control_boxes, self.timings, self.exports]

    def resume(self, fresh: bool = False) -> tuple[set[str], int]:
        """Prepare the logs for this run: returns the paths already scored (to skip) and how many failures
        earlier attempts recorded (dropped: those videos are tried again). `fresh` drops every log (the
        run starts over). Rows of videos without a score row (the one a kill interrupted) are removed
        from the other logs."""
        if fresh:
            for log in self.logs:
                log.remove()
            return set(), 0
        failed = len(self.failures.rows())
        self.failures.remove()
        self.scores.keep(lambda row: True)  # drops a torn last row
        scored = self.scores.rows()
        paths, clips = {row["path"] for row in scored}, {row["clip"] for row in scored}
        for log in (self.boxes, self.control_boxes):
            log.keep(lambda row: row["clip"] in clips)
        for log in (self.timings, self.exports):
            log.keep(lambda row: row["path"] in paths)
        return paths, failed

    def fail(self, path: str, clip: str, error: BaseException) -> None:
        self.failures.append([{"path": path, "clip": clip, "error_type": error.__class__.__name__, "error": one_line(error)}])
