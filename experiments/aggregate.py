"""Aggregate a Hydra multirun into median/IQR tables, rank-test comparisons and plots.

Usage: ``python -m experiments.aggregate <multirun_dir> [--metric NAME ...] [--x OVERRIDE_KEY]
[--compare A:B ...] [--out DIR] [--wandb]``. Seeds are pooled (median and IQR over runs) because one seed says
little; every other override, plus the record's ``condition``, separates groups.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from experiments.errors import UserError
from experiments.report import log_to_wandb, sort_value, write_outputs
from experiments.stats import holm, mann_whitney, median_iqr

OVERRIDES_KEY = "_overrides"  # names of a record's group columns (its job's overrides minus seed)
_NOT_METRICS = {"condition", "seed", OVERRIDES_KEY}


# ---------------------------------------------------------------- collecting


def _natural_key(path: Path) -> tuple:
    """Sort job dirs as 0, 1, 2, 10 rather than 0, 1, 10, 2."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", path.as_posix()) if t)


def _parse_value(raw: str) -> Any:
    """An override value as YAML would read it (numbers become numbers); non-scalars stay strings."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return value if value is None or isinstance(value, (bool, int, float, str)) else raw


def parse_overrides(path: Path) -> dict[str, Any]:
    """Job overrides as key -> value, without ``hydra.*`` keys and deletions (``~key``)."""
    if not path.is_file():
        return {}
    try:
        items = yaml.safe_load(path.read_text()) or []
    except yaml.YAMLError as exc:
        raise UserError(f"cannot parse {path}: {exc.__class__.__name__}; re-run the job or delete its dir") from exc
    if not isinstance(items, list):
        raise UserError(f"{path} is not a YAML list of overrides; re-run the job or delete its dir")
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        key = key.lstrip("+")
        if not sep or key.startswith("~") or key == "hydra" or key.startswith("hydra."):
            continue
        overrides[key] = _parse_value(raw)
    return overrides


def _parse_json_object(text: str, where: str) -> dict[str, Any]:
    """One JSON object from text, or a UserError naming where it came from."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where} is not valid JSON ({exc.msg}); re-run the job or delete its dir") from exc
    if not isinstance(obj, dict):
        raise UserError(f"{where} does not hold a JSON object; re-run the job or delete its dir")
    return obj


def _job_records(job: Path) -> list[dict[str, Any]]:
    """The records of one completed job, each tagged with the job's overrides as group columns."""
    overrides = parse_overrides(job / ".hydra" / "overrides.yaml")
    seed = overrides.pop("seed", None)
    jsonl = job / "records.jsonl"
    if jsonl.is_file():
        raw = []
        for lineno, line in enumerate(jsonl.read_text().splitlines(), start=1):
            if line.strip():
                raw.append(_parse_json_object(line, f"{jsonl}:{lineno}"))
    else:
        metrics = _parse_json_object((job / "metrics.json").read_text(), str(job / "metrics.json"))
        raw = [{"condition": "all", "seed": metrics.get("seed", seed), **metrics}]
    records = []
    for rec in raw:
        clash = sorted(set(rec) & set(overrides))
        if clash:
            raise UserError(f"{job}: metric {clash[0]!r} has the name of an override; rename the metric")
        rec.setdefault("seed", seed)
        rec["condition"] = str(rec.get("condition", "all"))
        records.append({**overrides, **rec, OVERRIDES_KEY: tuple(overrides)})
    return records


def collect_records(sweep_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """All records under a multirun dir and the number of incomplete jobs (a ``.hydra`` but no metrics)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"multirun dir {sweep_dir} does not exist; pass the dir Hydra printed for the sweep")
    jobs: list[Path] = []
    incomplete = 0
    for root, dirs, files in os.walk(sweep_dir):
        dirs[:] = [d for d in dirs if d != ".hydra"]
        if "metrics.json" in files:
            jobs.append(Path(root))
        elif (Path(root) / ".hydra").is_dir():
            incomplete += 1
    if not jobs:
        raise UserError(f"no completed jobs (dirs with metrics.json) under {sweep_dir}; run the sweep or pass its dir")
    records = [rec for job in sorted(jobs, key=_natural_key) for rec in _job_records(job)]
    return records, incomplete


# ---------------------------------------------------------------- summarising


def _override_values(records: Iterable[dict[str, Any]]) -> dict[str, set]:
    """Each override key and the set of values it takes over the records (missing as None)."""
    records = list(records)
    keys = dict.fromkeys(c for rec in records for c in rec.get(OVERRIDES_KEY, ()))
    return {k: {repr(rec.get(k)) for rec in records} for k in keys}


def group_columns(records: Iterable[dict[str, Any]]) -> list[str]:
    """Override columns that vary over the records, in first-seen order (constant ones are notes)."""
    return [k for k, values in _override_values(records).items() if len(values) > 1]


def fixed_overrides(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Overrides shared by every record (e.g. the experiment name): said once, not as a column."""
    records = list(records)
    return {k: records[0].get(k) for k, values in _override_values(records).items() if len(values) == 1}


def metric_names(records: Iterable[dict[str, Any]]) -> list[str]:
    """Numeric metric names seen in any record, in first-seen order."""
    names: dict[str, None] = {}
    for rec in records:
        cols = set(rec.get(OVERRIDES_KEY, ()))
        for key, value in rec.items():
            if key not in _NOT_METRICS and key not in cols and isinstance(value, (int, float)):
                names.setdefault(key)
    return list(names)


def _check_metrics(records: list[dict[str, Any]], metrics: Sequence[str] | None) -> list[str]:
    """The chosen metrics, defaulting to all; unknown names are a user error."""
    known = metric_names(records)
    if metrics is None:
        return known
    unknown = [m for m in metrics if m not in known]
    if unknown:
        raise UserError(f"unknown --metric {unknown[0]}; known metrics: {', '.join(known) or '(none)'}")
    return list(dict.fromkeys(metrics))


def _groups(records: list[dict[str, Any]], cols: list[str]) -> dict[tuple, list[dict[str, Any]]]:
    """Records keyed by their override values, ordered by those values."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault(tuple(rec.get(c) for c in cols), []).append(rec)
    return dict(sorted(groups.items(), key=lambda kv: tuple(sort_value(v) for v in kv[0])))


def _by_condition(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records keyed by condition, in first-seen order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        out.setdefault(str(rec.get("condition", "all")), []).append(rec)
    return out


def _values(records: list[dict[str, Any]], metric: str) -> list[float]:
    """A metric's values over records, missing and null as NaN."""
    return [math.nan if rec.get(metric) is None else float(rec[metric]) for rec in records]


def summarize(records: list[dict[str, Any]], metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per (override group, condition, metric) with n, runs, median, q25, q75."""
    chosen = _check_metrics(records, metrics)
    cols = group_columns(records)
    rows = []
    for key, group in _groups(records, cols).items():
        for condition, recs in _by_condition(group).items():
            for metric in chosen:
                if not any(metric in rec for rec in recs):
                    continue
                values = _values(recs, metric)
                median, q25, q75 = median_iqr(values)
                n = sum(not math.isnan(v) for v in values)
                finite = [v for v in values if not math.isnan(v)]
                mean = sum(finite) / len(finite) if finite else math.nan
                rows.append({**dict(zip(cols, key)), "condition": condition, "metric": metric, "n": n,
                             "runs": len(recs), "median": median, "q25": q25, "q75": q75, "mean": mean})
    return rows


def compare(records: list[dict[str, Any]], pairs: Sequence[tuple[str, str]],
            metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Mann–Whitney A vs B per override group and metric, Holm-adjusted within each override group
    (the family is one cell of the sweep: its pairs x metrics, as in the paper's per-panel tests)."""
    chosen = _check_metrics(records, metrics)
    known = set(_by_condition(records))
    for a, b in pairs:
        missing = [c for c in (a, b) if c not in known]
        if missing:
            raise UserError(f"--compare {a}:{b}: no condition {missing[0]!r}; known: {', '.join(sorted(known))}")
    cols = group_columns(records)
    rows = []
    for key, group in _groups(records, cols).items():
        group_rows: list[dict[str, Any]] = []
        by_cond = _by_condition(group)
        for a, b in pairs:
            if a not in by_cond or b not in by_cond:
                continue
            for metric in chosen:
                if not any(metric in rec for rec in by_cond[a] + by_cond[b]):
                    continue
                va, vb = _values(by_cond[a], metric), _values(by_cond[b], metric)
                if all(math.isnan(v) for v in va + vb):
                    continue  # nothing to compare (e.g. no run reached the cutoff)
                med_a, med_b = median_iqr(va)[0], median_iqr(vb)[0]
                group_rows.append({**dict(zip(cols, key)), "metric": metric, "a": a, "b": b,
                             "n_a": sum(not math.isnan(v) for v in va), "n_b": sum(not math.isnan(v) for v in vb),
                             "median_a": med_a, "median_b": med_b, "diff_median": med_a - med_b,
                             "p": mann_whitney(va, vb)})
        for row, adjusted in zip(group_rows, holm([r["p"] for r in group_rows])):
            row["p_holm"] = adjusted
        rows += group_rows
    return rows


# ---------------------------------------------------------------- CLI


def _parse_pair(text: str) -> tuple[str, str]:
    """``A:B`` -> (A, B)."""
    a, sep, b = text.partition(":")
    if not sep or not a or not b:
        raise UserError(f"--compare {text!r} is not A:B; write e.g. --compare freeze_informed:baseline")
    return a, b


def select(records: list[dict[str, Any]], conditions: Sequence[str]) -> list[dict[str, Any]]:
    """Records whose overrides match every KEY=VALUE (values compared as YAML reads them)."""
    for condition in conditions:
        key, sep, raw = condition.partition("=")
        if not sep:
            raise UserError(f"--where {condition!r} is not KEY=VALUE; write e.g. --where model.network.hidden=64")
        value = _parse_value(raw)
        if not any(key in rec.get(OVERRIDES_KEY, ()) for rec in records):
            raise UserError(f"--where {key}: not an override of this sweep")
        records = [rec for rec in records if rec.get(key) == value]
        if not records:
            raise UserError(f"--where {condition}: no job has that value")
    return records


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.aggregate", description=__doc__.split("\n")[0])
    parser.add_argument("multirun_dir", type=Path)
    parser.add_argument("--metric", action="append", help="metric to report (repeatable; default: all)")
    parser.add_argument("--x", help="numeric override key to plot metrics against, e.g. dataset.n_train")
    parser.add_argument("--compare", action="append", default=[], metavar="A:B", help="conditions to rank-test")
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                        help="keep only jobs with this override value (repeatable), e.g. model.network.hidden=64")
    parser.add_argument("--out", type=Path, help="output dir (default: <multirun_dir>/aggregate)")
    parser.add_argument("--wandb", action="store_true", help="also log the table and plots to W&B (offline unless WANDB_MODE=online)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print one line to stderr and return 2."""
    args = _parser().parse_args(argv)
    try:
        records, incomplete = collect_records(args.multirun_dir)
        records = select(records, args.where)
        cols = group_columns(records)
        if args.x is not None and args.x not in cols:
            raise UserError(f"--x {args.x} is not an override key of {args.multirun_dir}; "
                            f"known keys: {', '.join(cols) or '(none)'}")
        summary = summarize(records, args.metric)
        pairs = [_parse_pair(p) for p in args.compare]
        comparisons = compare(records, pairs, args.metric) if pairs else []
        fixed = ", ".join(f"{k}={v}" for k, v in fixed_overrides(records).items())
        notes = [f"{len(records)} records from {args.multirun_dir}"
                 + (f"; {incomplete} incomplete jobs skipped" if incomplete else "")
                 + (f"; every job ran with {fixed}" if fixed else "")]
        markdown = write_outputs(args.out or args.multirun_dir / "aggregate", summary, comparisons, x=args.x,
                                 title=f"Aggregate of {args.multirun_dir}", notes=notes)
        if args.wandb:
            log_to_wandb(args.out or args.multirun_dir / "aggregate", summary, args.multirun_dir)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
