"""Writing an aggregate: Markdown and CSV tables, faceted plots, and an optional W&B run."""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from common.errors import UserError
from experiments.analysis.tables import markdown_table

SUMMARY_FIELDS = ["condition", "metric", "n", "runs", "median", "q25", "q75", "mean"]
COMPARE_FIELDS = ["factor", "metric", "a", "b", "n_a", "n_b", "median_a", "median_b", "diff_median", "test", "p", "p_holm"]


def sort_value(value: Any) -> tuple:
    """Order mixed override values: numbers, then strings, then missing."""
    if isinstance(value, (int, float)):
        return (0, value, "")
    return (2, 0, "") if value is None else (1, 0, str(value))


def _row_columns(rows: list[dict[str, Any]], fixed: list[str]) -> list[str]:
    """Group columns of summary/comparison rows: every key that is not one of the fixed fields."""
    return [k for k in dict.fromkeys(k for row in rows for k in row) if k not in fixed]


def _fmt(value: Any) -> str:
    """A table cell: floats to 4 significant digits, missing as empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _cell(row: dict[str, Any]) -> str:
    if row["n"] == 0:
        return f"– (0/{row['runs']})"
    text = f"{_fmt(row['median'])} [{_fmt(row['q25'])}, {_fmt(row['q75'])}]"
    return text if row["n"] == row["runs"] else f"{text} ({row['n']}/{row['runs']})"


def _wide_table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    """One metric as a grid: a row per override group, a column per condition (as papers print it)."""
    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    grid: dict[tuple, dict[str, str]] = {}
    for row in rows:
        grid.setdefault(tuple(row.get(c) for c in cols), {})[row["condition"]] = _cell(row)
    body = [[_fmt(v) for v in key] + [cells.get(c, "") for c in conditions] for key, cells in grid.items()]
    return markdown_table([*cols, *conditions], body)


def render_markdown(
    summary: list[dict[str, Any]], comparisons: list[dict[str, Any]], title: str, notes: Sequence[str] = ()
) -> str:
    """summary.md: a header, notes, one table per metric, then the comparisons table if any."""
    cols = _row_columns(summary, SUMMARY_FIELDS)
    parts = [f"# {title}", *notes]
    for metric in dict.fromkeys(r["metric"] for r in summary):
        parts += [
            f"## {metric}",
            "median [IQR] over seeds; (n/runs) where some runs have no value",
            _wide_table([r for r in summary if r["metric"] == metric], cols),
        ]
    if comparisons:
        ccols = _row_columns(comparisons, COMPARE_FIELDS)
        body = [
            [_fmt(r.get(c)) for c in ccols]
            + [
                r["metric"],
                r["factor"],
                _fmt(r["a"]),
                _fmt(r["b"]),
                str(r["n_a"]),
                str(r["n_b"]),
                _fmt(r["diff_median"]),
                _fmt(r["p"]),
                _fmt(r["p_holm"]),
            ]
            for r in comparisons
        ]
        header = [*ccols, "metric", "factor", "A", "B", "n A", "n B", "median A − B", "p", "p (Holm)"]
        tests = " / ".join(dict.fromkeys(r["test"] for r in comparisons))
        parts += [f"## Comparisons ({tests}, two-sided; Holm-adjusted within each row group)", markdown_table(header, body)]
    if not summary:
        parts.append("No numeric metrics found.")
    return "\n\n".join(parts) + "\n"


def _write_csv(path: Path, rows: list[dict[str, Any]], fixed: list[str]) -> None:
    """Rows as CSV with group columns first; full precision, missing as empty."""
    fields = _row_columns(rows, fixed) + fixed
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _label(row: dict[str, Any], cols: Sequence[str]) -> str:
    """A legend/tick label: the condition and the group's override values."""
    return ", ".join([row["condition"], *(f"{c}={_fmt(row[c])}" for c in cols)])


def _panels(rows: list[dict[str, Any]], x: str, cols: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Rows split into one panel per combination of the overrides other than x (e.g. one per width)."""
    others = [c for c in cols if c != x]
    panels: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: tuple(sort_value(r.get(c)) for c in others)):
        if row.get(x) is not None:
            panels.setdefault(", ".join(f"{c}={_fmt(row[c])}" for c in others), []).append(row)
    return panels


def _plot_lines(ax: Any, rows: list[dict[str, Any]], x: str, colours: dict[str, str]) -> None:
    """Median vs x per condition, with a shaded IQR band; a condition keeps its colour across panels."""
    xs_all = []
    for condition, colour in colours.items():
        pts = sorted((r for r in rows if r["condition"] == condition and not math.isnan(r["median"])), key=lambda r: r[x])
        if not pts:
            continue
        xs = [float(r[x]) for r in pts]
        xs_all += xs
        ax.plot(xs, [r["median"] for r in pts], marker="o", color=colour, label=condition)
        ax.fill_between(xs, [r["q25"] for r in pts], [r["q75"] for r in pts], color=colour, alpha=0.15)
    if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(x)


def _plot_bars(ax: Any, rows: list[dict[str, Any]], cols: list[str]) -> None:
    """Median per group as bars with IQR error bars."""
    med = [r["median"] for r in rows]
    low = [0.0 if math.isnan(m - r["q25"]) else m - r["q25"] for m, r in zip(med, rows)]
    high = [0.0 if math.isnan(r["q75"] - m) else r["q75"] - m for m, r in zip(med, rows)]
    pos = list(range(len(rows)))
    ax.bar(pos, [0.0 if math.isnan(m) else m for m in med], yerr=[low, high], capsize=3)
    ax.set_xticks(pos, [_label(r, cols) for r in rows], rotation=30, ha="right", fontsize="small")


def _file_stem(metric: str) -> str:
    """A metric name usable as a file name: ``test/f1`` -> ``test_f1``."""
    return re.sub(r"[^\w.-]", "_", metric)


def write_plots(out_dir: Path, summary: list[dict[str, Any]], x: str | None = None) -> list[Path]:
    """One PNG per metric: lines over ``x`` if given, else bars per group."""
    cols = _row_columns(summary, SUMMARY_FIELDS)
    if x is not None:
        bad = [r[x] for r in summary if r.get(x) is not None and not isinstance(r[x], (int, float))]
        if x not in cols or bad:
            raise UserError(f"--x {x} needs a numeric override key; got {bad[:1] or 'no such key'}; pick another")
    paths = []
    for metric in dict.fromkeys(r["metric"] for r in summary):
        rows = [r for r in summary if r["metric"] == metric]
        if x:
            panels = _panels(rows, x, cols)
            columns = min(3, len(panels))
            grid_rows = -(-len(panels) // columns)
            fig = Figure(figsize=(4.2 * columns, 3.4 * grid_rows), layout="constrained")
            FigureCanvasAgg(fig)
            cycle = [f"C{i}" for i in range(10)]
            colours = {c: cycle[i % 10] for i, c in enumerate(dict.fromkeys(r["condition"] for r in rows))}
            axes = fig.subplots(grid_rows, columns, squeeze=False, sharey=True)
            for ax, (title, panel_rows) in zip(axes.flat, panels.items()):
                _plot_lines(ax, panel_rows, x, colours)
                ax.set_title(title or metric, fontsize="medium")
            for ax in axes.flat[len(panels) :]:
                ax.set_visible(False)
            for ax in axes[:, 0]:
                ax.set_ylabel(metric)
            from matplotlib.lines import Line2D

            handles = [Line2D([], [], color=colour, marker="o", label=c) for c, colour in colours.items()]
            axes.flat[0].legend(handles=handles, fontsize="small")
            fig.suptitle(f"{metric}: median and IQR over seeds")
        else:
            fig = Figure(figsize=(max(4.0, min(30.0, 1.0 + 0.6 * len(rows))), 4.8))
            FigureCanvasAgg(fig)
            ax = fig.add_subplot()
            _plot_bars(ax, rows, cols)
            ax.set_ylabel(metric)
            ax.set_title(f"{metric}: median, IQR")
        path = out_dir / f"plot_{_file_stem(metric)}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        paths.append(path)
    return paths


def write_outputs(
    out_dir: Path,
    summary: list[dict[str, Any]],
    comparisons: Sequence[dict[str, Any]] = (),
    x: str | None = None,
    title: str = "Aggregate",
    notes: Sequence[str] = (),
) -> str:
    """Write summary.csv, summary.md, comparisons.csv (if any) and plots; return the Markdown."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output dir {out_dir} ({exc.strerror}); pass a writable --out DIR") from exc
    comparisons = list(comparisons)
    markdown = render_markdown(summary, comparisons, title, notes)
    _write_csv(out_dir / "summary.csv", summary, SUMMARY_FIELDS)
    (out_dir / "summary.md").write_text(markdown)
    if comparisons:
        _write_csv(out_dir / "comparisons.csv", comparisons, COMPARE_FIELDS)
    write_plots(out_dir, summary, x)
    return markdown


def log_to_wandb(out_dir: Path, summary: list[dict[str, Any]], sweep_dir: Path) -> None:
    """The summary as a W&B table and the plots as images, in one run grouped with the sweep's jobs
    (offline unless WANDB_MODE=online, like the jobs themselves)."""
    import wandb

    from experiments.core.resolvers import wandb_offline

    sweep_dir = Path(sweep_dir).resolve()
    run = wandb.init(
        project="fivefold",
        group=f"{sweep_dir.parent.parent.name}-{sweep_dir.name}",
        job_type="aggregate",
        name=f"aggregate {sweep_dir.name}",
        dir=str(out_dir),
        mode="offline" if wandb_offline() else "online",
    )
    try:
        columns = _row_columns(summary, SUMMARY_FIELDS) + SUMMARY_FIELDS
        table = wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in summary])
        images = {f"aggregate/{p.stem}": wandb.Image(str(p)) for p in sorted(Path(out_dir).glob("*.png"))}
        run.log({"aggregate/summary": table, **images})
    finally:
        run.finish()
