"""Aggregate a Hydra multirun into median/IQR tables, rank-test comparisons and plots.

Usage: ``python -m experiments.analysis.aggregate <multirun_dir> [--metric NAME ...] [--x OVERRIDE_KEY]
[--compare A:B | --compare FACTOR=A:B ...] [--paired] [--out DIR] [--wandb]``. Seeds are pooled (median and
IQR over runs) because one seed says little; every other override that varies, and every factor field of
the records (str or int values, e.g. ``condition``, ``attack``, ``attack_size``), separates groups. Only
float fields are metrics. ``--paired`` uses the Wilcoxon signed-rank test over seeds (arms that share
seed, init and data) instead of Mann-Whitney U.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from common.errors import UserError, print_error
from experiments.analysis.report import log_to_wandb, sort_value, write_outputs
from experiments.analysis.stats import holm, mann_whitney, median_iqr, wilcoxon_paired
from experiments.core.run_dir import PRESENTATION_ONLY, under_any

OVERRIDES_KEY = "_overrides"  # names of a record's group columns (its job's overrides minus seed)
CONDITION = "condition"  # the factor `--compare A:B` means, and the columns of the wide tables
_NOT_METRICS = {CONDITION, "seed", OVERRIDES_KEY}
MANN_WHITNEY, WILCOXON = "Mann-Whitney U", "Wilcoxon signed-rank (paired by seed)"


def is_factor_value(value: Any) -> bool:
    """Factor fields are strings or ints (not bools, not floats): ``attack``, ``attack_size``, ``crop``."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def is_metric_value(value: Any) -> bool:
    return value is None or isinstance(value, float)


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
    """Job overrides as key -> value, without deletions (``~key``) and the `PRESENTATION_ONLY` keys."""
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
        if not sep or key.startswith("~") or under_any(key, PRESENTATION_ONLY):
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


def _job_commit(job: Path) -> str | None:
    """The short commit (with "+dirty" when the tree had changes) from the job's provenance.json."""
    try:
        provenance = json.loads((job / "provenance.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    commit = provenance.get("git_commit") if isinstance(provenance, dict) else None
    if not commit:
        return None
    return commit[:12] + ("+dirty" if provenance.get("git_dirty") else "")


def _job_records(job: Path) -> list[dict[str, Any]]:
    """The records of one completed job, each tagged with the job's overrides as group columns."""
    overrides = parse_overrides(job / ".hydra" / "overrides.yaml")
    seed = overrides.pop("seed", None)
    commit = _job_commit(job)
    if commit is not None:
        overrides["git_commit"] = commit  # --where git_commit=... filters; --by-commit makes it a column
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


def drop_commit_column(records: list[dict[str, Any]]) -> list[str]:
    """Take `git_commit` out of the group columns (in place): a sweep whose jobs started at different commits
    of the same code is one experiment. Returns the commits seen, with their job counts, for the notes."""
    counts: dict[str, int] = {}
    for rec in records:
        if "git_commit" in rec.get(OVERRIDES_KEY, ()):
            commit = str(rec.pop("git_commit"))
            counts[commit] = counts.get(commit, 0) + 1
            rec[OVERRIDES_KEY] = tuple(k for k in rec[OVERRIDES_KEY] if k != "git_commit")
    return [f"{commit} ({n} records)" for commit, n in counts.items()]


def _walk_once(top: Path) -> Iterator[tuple[str, list[str]]]:
    """(dir, file names) below `top`, following links but visiting each real dir once and skipping `.hydra`:
    a folder of links to the jobs of several sweeps reads like one sweep, and a link loop ends."""
    seen = {os.path.realpath(top)}
    for root, dirs, files in os.walk(top, followlinks=True):
        keep = []
        for name in dirs:
            real = os.path.realpath(os.path.join(root, name))
            if name != ".hydra" and real not in seen:
                seen.add(real)
                keep.append(name)
        dirs[:] = keep
        yield root, files


def collect_records(sweep_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """All records under a multirun dir and the number of incomplete jobs (a ``.hydra`` but no metrics)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"multirun dir {sweep_dir} does not exist; pass the dir Hydra printed for the sweep")
    jobs: list[Path] = []
    incomplete = 0
    for root, files in _walk_once(sweep_dir):
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


def factor_fields(records: Iterable[dict[str, Any]]) -> list[str]:
    """Record fields (not overrides, not `seed` / `condition`) holding str or int values, first-seen order."""
    fields: dict[str, None] = {}
    for rec in records:
        cols = set(rec.get(OVERRIDES_KEY, ()))
        for key, value in rec.items():
            if key not in _NOT_METRICS and key not in cols and is_factor_value(value):
                fields.setdefault(key)
    return list(fields)


def _column_values(records: list[dict[str, Any]]) -> dict[str, set]:
    """Each override key and factor field, and the set of values it takes (missing as None)."""
    values = _override_values(records)
    for key in factor_fields(records):
        values[key] = {repr(rec.get(key)) for rec in records}
    return values


def group_columns(records: Iterable[dict[str, Any]]) -> list[str]:
    """Overrides and factor fields that vary over the records, in first-seen order (constant ones are notes)."""
    return [k for k, values in _column_values(list(records)).items() if len(values) > 1]


def fixed_overrides(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Overrides and factors shared by every record (e.g. the experiment name): said once, not as a column."""
    records = list(records)
    return {k: records[0].get(k) for k, values in _column_values(records).items() if len(values) == 1}


def metric_names(records: Iterable[dict[str, Any]]) -> list[str]:
    """Numeric metric names seen in any record, in first-seen order."""
    names: dict[str, None] = {}
    for rec in records:
        cols = set(rec.get(OVERRIDES_KEY, ()))
        for key, value in rec.items():
            if key not in _NOT_METRICS and key not in cols and isinstance(value, float):
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
                rows.append(
                    {
                        **dict(zip(cols, key)),
                        "condition": condition,
                        "metric": metric,
                        "n": n,
                        "runs": len(recs),
                        "median": median,
                        "q25": q25,
                        "q75": q75,
                        "mean": mean,
                    }
                )
    return rows


def _check_pairs(records: list[dict[str, Any]], pairs: Sequence[tuple[str, Any, Any]]) -> None:
    """Every factor named by --compare exists and takes both values somewhere."""
    for factor, a, b in pairs:
        known = {rec.get(factor) for rec in records if factor in rec}
        if not known:
            raise UserError(f"--compare {factor}={a}:{b}: no factor or override {factor!r} in these records")
        missing = [v for v in (a, b) if v not in known]
        if missing:
            label = f"{a}:{b}" if factor == CONDITION else f"{factor}={a}:{b}"
            what = "condition" if factor == CONDITION else f"{factor} value"
            raise UserError(f"--compare {label}: no {what} {missing[0]!r}; known: {', '.join(sorted(map(str, known)))}")


def compare(
    records: list[dict[str, Any]],
    pairs: Sequence[tuple[str, Any, Any]],
    metrics: Sequence[str] | None = None,
    paired: bool = False,
) -> list[dict[str, Any]]:
    """For each (factor, A, B): A vs B on each metric within every group of the other columns, Holm-adjusted
    within each group (the family is one cell of the sweep: its comparisons x metrics, as in the paper's
    per-panel tests). Unpaired: Mann-Whitney U. Paired: Wilcoxon signed-rank over runs matched by seed."""
    chosen = _check_metrics(records, metrics)
    _check_pairs(records, pairs)
    cols = group_columns(records)
    families: dict[tuple, list[dict[str, Any]]] = {}
    for factor, a, b in pairs:
        others = [c for c in [*cols, CONDITION] if c != factor]
        for key, group in _groups(records, others).items():
            arm_a = [rec for rec in group if rec.get(factor) == a]
            arm_b = [rec for rec in group if rec.get(factor) == b]
            if not arm_a or not arm_b:
                continue
            family_key = tuple((c, v) for c, v in zip(others, key) if c in cols)
            labels = {c: v for c, v in zip(others, key)}
            for metric in chosen:
                if not any(metric in rec for rec in arm_a + arm_b):
                    continue
                va, vb = _values(arm_a, metric), _values(arm_b, metric)
                if all(math.isnan(v) for v in va + vb):
                    continue  # nothing to compare (e.g. no run reached the cutoff)
                if paired:
                    p, n_pairs = wilcoxon_paired(_by_seed(arm_a, metric), _by_seed(arm_b, metric))
                    n_a = n_b = n_pairs
                else:
                    p = mann_whitney(va, vb)
                    n_a, n_b = sum(not math.isnan(v) for v in va), sum(not math.isnan(v) for v in vb)
                med_a, med_b = median_iqr(va)[0], median_iqr(vb)[0]
                families.setdefault(family_key, []).append(
                    {
                        **{c: labels.get(c) for c in cols if c != factor},
                        "factor": factor,
                        **({} if factor == CONDITION else {CONDITION: labels.get(CONDITION)}),
                        "metric": metric,
                        "a": a,
                        "b": b,
                        "n_a": n_a,
                        "n_b": n_b,
                        "median_a": med_a,
                        "median_b": med_b,
                        "diff_median": med_a - med_b,
                        "test": WILCOXON if paired else MANN_WHITNEY,
                        "p": p,
                    }
                )
    rows = []
    for family in families.values():
        for row, adjusted in zip(family, holm([r["p"] for r in family])):
            row["p_holm"] = adjusted
        rows += family
    return rows


def _by_seed(records: list[dict[str, Any]], metric: str) -> dict[Any, float | None]:
    """metric by seed, for pairing; a seed that occurs twice in one arm cannot be paired."""
    out: dict[Any, float | None] = {}
    for rec in records:
        seed = rec.get("seed")
        if seed in out:
            raise UserError(f"--paired: seed {seed} occurs twice in one arm; pair only arms with one run per seed")
        out[seed] = rec.get(metric)
    return out


# ---------------------------------------------------------------- CLI


def _parse_pair(text: str) -> tuple[str, Any, Any]:
    """``A:B`` -> ("condition", A, B); ``FACTOR=A:B`` -> (FACTOR, A, B) with values as YAML reads them."""
    factor, sep, rest = text.partition("=")
    if not sep:
        factor, rest = CONDITION, text
    a, sep, b = rest.partition(":")
    if not sep or not a or not b or not factor:
        raise UserError(
            f"--compare {text!r} is not A:B or FACTOR=A:B; write e.g. --compare freeze_informed:fluid "
            "or --compare defense=tcd:none"
        )
    if factor == CONDITION:
        return factor, a, b
    return factor, _parse_value(a), _parse_value(b)


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
    parser = argparse.ArgumentParser(prog="python -m experiments.analysis.aggregate", description=__doc__.split("\n")[0])
    parser.add_argument("multirun_dir", type=Path)
    parser.add_argument("--metric", action="append", help="metric to report (repeatable; default: all)")
    parser.add_argument("--x", help="numeric override key to plot metrics against, e.g. dataset.n_train")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="[FACTOR=]A:B",
        help="rank-test condition A vs B, or values A vs B of another factor (repeatable)",
    )
    parser.add_argument(
        "--paired",
        action="store_true",
        help="Wilcoxon signed-rank over seeds (arms sharing seed, init and data) instead of Mann-Whitney U",
    )
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep only jobs with this override value (repeatable), e.g. model.network.hidden=64",
    )
    parser.add_argument(
        "--by-commit",
        action="store_true",
        help="group by the code commit each job ran (default: commits are listed in the notes, not a column)",
    )
    parser.add_argument("--out", type=Path, help="output dir (default: <multirun_dir>/aggregate)")
    parser.add_argument(
        "--wandb", action="store_true", help="also log the table and plots to W&B (offline unless WANDB_MODE=online)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print one line to stderr and return 2."""
    args = _parser().parse_args(argv)
    try:
        records, incomplete = collect_records(args.multirun_dir)
        records = select(records, args.where)
        commits = [] if args.by_commit else drop_commit_column(records)
        cols = group_columns(records)
        if args.x is not None and args.x not in cols:
            raise UserError(
                f"--x {args.x} is not an override key of {args.multirun_dir}; known keys: {', '.join(cols) or '(none)'}"
            )
        summary = summarize(records, args.metric)
        pairs = [_parse_pair(p) for p in args.compare]
        comparisons = compare(records, pairs, args.metric, paired=args.paired) if pairs else []
        fixed = ", ".join(f"{k}={v}" for k, v in fixed_overrides(records).items())
        notes = [
            f"{len(records)} records from {args.multirun_dir}"
            + (f"; {incomplete} incomplete jobs skipped" if incomplete else "")
            + (f"; every job ran with {fixed}" if fixed else "")
            + (f"; code commit {commits[0]}" if len(commits) == 1 else "")
            + (f"; jobs ran code commits {', '.join(commits)} (--by-commit groups by them)" if len(commits) > 1 else "")
        ]
        markdown = write_outputs(
            args.out or args.multirun_dir / "aggregate",
            summary,
            comparisons,
            x=args.x,
            title=f"Aggregate of {args.multirun_dir}",
            notes=notes,
        )
        if args.wandb:
            log_to_wandb(args.out or args.multirun_dir / "aggregate", summary, args.multirun_dir)
    except UserError as exc:
        print_error(str(exc))
        return 2
    print(markdown, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
