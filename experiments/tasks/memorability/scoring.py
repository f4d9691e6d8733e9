"""Any model's predictions against memorability ground truth (experiment=memorability_score_predictions).

A predictions CSV holds an id column (`task.id_column`) and one column of predicted scores per model;
each model gets the Spearman rank correlation with the ground-truth scores of `dataset` (Memento10k or
VideoMem files in the official layout, `dataset.target`) over the videos it predicts. Ids are matched as
written in the ground-truth file (`17` for Memento10k, `video10.webm` for VideoMem); an id the ground truth
lacks, a repeated id, a cell that is not a finite number or a constant column is refused in one line,
since any of them would make the correlation say something else than it seems to.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from common.errors import UserError
from common.files import require_file
from experiments.analysis.tables import markdown_table
from experiments.core.run_context import RunContext
from experiments.core.task import TaskResult

HOW = "a CSV with an id column (task.id_column) and one column of predicted scores per model"


@dataclass(frozen=True)
class Predictions:
    """Video ids in file order and each model's predictions, aligned with them."""

    ids: list[str]
    models: dict[str, np.ndarray]


def _number(text: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise UserError(f"{path}: line {line}: {column}={text!r} is not a finite number; every prediction must be one")
    return value


def read_predictions(path: str | Path, id_column: str, models: list[str] | None, skip: list[str]) -> Predictions:
    """The file's ids and the model columns: `models`, or every column but the id column and `skip`."""
    path = require_file(path, f"task.predictions: {HOW}")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    if id_column not in header:
        raise UserError(f"{path}: no column task.id_column={id_column!r} (columns: {', '.join(header)})")
    names = list(models) if models else [c for c in header if c != id_column and c not in skip]
    unknown = [name for name in names if name not in header]
    if unknown or not names:
        raise UserError(f"{path}: task.models={names} must name columns of the file (columns: {', '.join(header)})")
    if not rows:
        raise UserError(f"{path}: no rows; {HOW}")
    ids = [row[id_column] for row in rows]
    repeated = sorted({v for v in ids if ids.count(v) > 1}) if len(set(ids)) < len(ids) else []
    if repeated:
        raise UserError(
            f"{path}: video id {repeated[0]!r} appears more than once ({len(repeated)} repeated ids); one row per video"
        )
    values = {name: np.array([_number(row[name], path, i + 2, name) for i, row in enumerate(rows)]) for name in names}
    return Predictions(ids, values)


def read_ground_truth(cfg: DictConfig) -> dict[str, float]:
    """video id -> score from `dataset.scores` in the layout `dataset.format`, column `dataset.target`."""
    from data.memorability_scores import READERS

    fmt = str(cfg.dataset.format)
    if fmt not in READERS:
        raise UserError(f"dataset.format={fmt!r} must be one of {sorted(READERS)}")
    return READERS[fmt][0](cfg.dataset.scores, str(cfg.dataset.target))


def score_predictions(truth: dict[str, float], predictions: Predictions, source: str) -> dict[str, dict[str, float]]:
    """model -> {spearman, videos}; every predicted id must have a ground-truth score."""
    from models.memorability.predictors import spearman

    unknown = [v for v in predictions.ids if v not in truth]
    if unknown:
        example = next(iter(truth))
        raise UserError(
            f"{len(unknown)} of {len(predictions.ids)} predicted videos (e.g. {unknown[0]!r}) have no score in {source} "
            f"(its ids look like {example!r}): score predictions against their own data set's ground truth"
        )
    if len(predictions.ids) < 3:
        raise UserError(f"{len(predictions.ids)} predicted videos: a Spearman correlation needs at least 3")
    target = np.array([truth[v] for v in predictions.ids])
    out = {}
    for name, values in predictions.models.items():
        if np.ptp(values) == 0:
            raise UserError(f"model column {name!r} predicts the same score for every video: its rank correlation is undefined")
        out[name] = {"spearman": spearman(values, target), "videos": float(len(values))}
    return out


def run(cfg: DictConfig, ctx: RunContext) -> TaskResult:
    """Spearman of each model column of `task.predictions` against `dataset`'s ground truth."""
    task = cfg.task
    if not task.get("predictions"):
        raise UserError(f"task.predictions is not set: give {HOW}")
    truth = read_ground_truth(cfg)
    models = list(task.models) if task.get("models") else None
    predictions = read_predictions(task.predictions, str(task.id_column), models, list(task.get("skip_columns") or []))
    scores = score_predictions(truth, predictions, str(cfg.dataset.scores))
    metrics = {f"{name}/{key}": value for name, values in scores.items() for key, value in values.items()}
    metrics["data/ground_truth_videos"] = float(len(truth))
    records = [{"condition": name, "dataset": str(cfg.dataset.name), **values} for name, values in scores.items()]
    table = (
        f"Predictions {task.predictions} against {cfg.dataset.scores} ({cfg.dataset.format}, {cfg.dataset.target} "
        f"score; {len(truth)} videos with ground truth): Spearman over the videos each model predicts.\n\n"
        + markdown_table(
            ["model", "videos", "spearman"],
            [[name, int(values["videos"]), f"{values['spearman']:.4f}"] for name, values in scores.items()],
        )
    )
    return TaskResult(metrics=metrics, table=table, records=records)
