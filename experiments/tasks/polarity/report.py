"""Per-condition summaries, comparisons and learning-curve plots for the polarity task."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from common.errors import UserError
from experiments.analysis.aggregate import compare, summarize
from experiments.analysis.tables import markdown_table

SUMMARIZED_METRICS = ("val_error", "epochs_to_cutoff", "epochs_to_cutoff_reached", "best_epoch")
COMPARED_METRICS = ("val_error", "epochs_to_cutoff")


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def summarize_conditions(
    records: Sequence[dict[str, Any]], conditions: Sequence[str], pairs: Sequence[tuple[str, str]], cutoff: float
) -> tuple[dict[str, float], str]:
    """Flat metrics `<condition>/<metric>_{median,q25,q75}` and `<A>_vs_<B>/<metric>_mwu_p[_holm]`, and a
    Markdown table. The statistics are the multirun aggregator's, applied to this job's records."""
    for a, b in pairs:
        for name in (a, b):
            if name not in conditions:
                raise UserError(f"polarity.compare names '{name}', which is not a condition (have: {', '.join(conditions)})")
    records = list(records)
    metrics: dict[str, float] = {}
    for row in summarize(records, [m for m in SUMMARIZED_METRICS if any(m in r for r in records)]):
        for stat in ("median", "q25", "q75"):
            metrics[f"{row['condition']}/{row['metric']}_{stat}"] = row[stat]
    header = [
        "condition",
        "runs",
        "val error median [IQR]",
        "epochs to cutoff (censored) median [IQR]",
        "reached cutoff",
        "best val acc min / max",
    ]
    rows = []
    for name in conditions:
        runs = [r for r in records if r["condition"] == name]
        best_acc = np.array([r["best_val_acc"] for r in runs], dtype=float)
        metrics[f"{name}/reached_cutoff_fraction"] = float(np.mean([r["reached_cutoff"] for r in runs]))
        metrics[f"{name}/best_val_acc_min"] = float(np.nanmin(best_acc))
        metrics[f"{name}/best_val_acc_max"] = float(np.nanmax(best_acc))
        metrics[f"{name}/runs"] = float(len(runs))
        cell = lambda k, name=name: (
            f"{_fmt(metrics.get(f'{name}/{k}_median'))} [{_fmt(metrics.get(f'{name}/{k}_q25'))}, "
            f"{_fmt(metrics.get(f'{name}/{k}_q75'))}]"
        )
        rows.append(
            [
                name,
                len(runs),
                cell("val_error"),
                cell("epochs_to_cutoff"),
                f"{metrics[f'{name}/reached_cutoff_fraction']:.0%}",
                f"{_fmt(metrics[f'{name}/best_val_acc_min'])} / {_fmt(metrics[f'{name}/best_val_acc_max'])}",
            ]
        )
    table = markdown_table(header, rows)
    if pairs:
        comparison_header = [
            "A",
            "B",
            "metric",
            "median A − B",
            "Wilcoxon signed-rank p (paired by seed)",
            "Holm p",
            "Mann-Whitney p",
            "Holm p",
        ]
        comparison_rows = []
        condition_pairs = [("condition", a, b) for a, b in pairs]
        unpaired = compare(records, condition_pairs, list(COMPARED_METRICS))
        paired = compare(records, condition_pairs, list(COMPARED_METRICS), paired=True)
        for u, w in zip(unpaired, paired):
            key = f"{u['a']}_vs_{u['b']}/{u['metric']}"
            metrics[f"{key}_mwu_p"], metrics[f"{key}_mwu_p_holm"] = u["p"], u["p_holm"]
            metrics[f"{key}_wilcoxon_p"], metrics[f"{key}_wilcoxon_p_holm"] = w["p"], w["p_holm"]
            comparison_rows.append(
                [u["a"], u["b"], u["metric"], *(_fmt(v) for v in (u["diff_median"], w["p"], w["p_holm"], u["p"], u["p_holm"]))]
            )
        counted = sum(not math.isnan(w["p"]) for w in paired)
        table += (
            "\n\nConditions of one seed share initial weights and data, so the paired test applies; Holm over "
            f"this table's {len(unpaired)} pairs x metrics, each test family separately (Wilcoxon: {counted} "
            "counted; a test with no non-zero difference is NaN and not counted).\n\n"
            + markdown_table(comparison_header, comparison_rows)
        )
    return metrics, table


def learning_curve_figure(curves: Sequence[tuple[str, np.ndarray]], cutoff: float, title: str):
    """Median validation accuracy per epoch for each condition, with the IQR shaded."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 4))
    axes = figure.subplots()
    for name in dict.fromkeys(n for n, _ in curves):
        stack = np.stack([c for n, c in curves if n == name])
        done = ~np.all(np.isnan(stack), axis=0)
        epochs = np.arange(1, stack.shape[1] + 1)[done]
        q25, median, q75 = np.nanpercentile(stack[:, done], [25, 50, 75], axis=0)
        axes.plot(epochs, median, label=name)
        axes.fill_between(epochs, q25, q75, alpha=0.2)
    axes.axhline(cutoff, color="grey", linestyle=":", linewidth=1)
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation accuracy (median, IQR)")
    axes.set_title(title)
    axes.legend()
    return figure
