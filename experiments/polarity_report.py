"""Per-condition summaries, comparisons and learning-curve plots for the polarity task."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments.errors import UserError
from experiments.stats import holm, mann_whitney, median_iqr

COMPARED_METRICS = ("val_error", "epochs_to_cutoff")


def _fmt(value: float, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def summarize_conditions(records: Sequence[dict[str, Any]], conditions: Sequence[str], pairs: Sequence[tuple[str, str]],
                         cutoff: float) -> tuple[dict[str, float], str]:
    """Flat metrics `<condition>/<metric>` and `<A>_vs_<B>/<metric>_mwu_p`, and a Markdown table."""
    for a, b in pairs:
        for name in (a, b):
            if name not in conditions:
                raise UserError(f"polarity.compare names '{name}', which is not a condition (have: {', '.join(conditions)})")
    metrics: dict[str, float] = {}
    rows = ["| condition | runs | val error median [IQR] | epochs to cutoff median [IQR] | reached cutoff | best val acc min / max |",
            "|---|---|---|---|---|---|"]
    for name in conditions:
        runs = [r for r in records if r["condition"] == name]
        column = {key: np.array([r[key] for r in runs], dtype=float) for key in runs[0] if key not in ("condition", "seed")}
        for key in ("val_error", "epochs_to_cutoff", "best_epoch"):
            median, q25, q75 = median_iqr(column[key])
            metrics.update({f"{name}/{key}_median": median, f"{name}/{key}_q25": q25, f"{name}/{key}_q75": q75})
        metrics[f"{name}/reached_cutoff_fraction"] = float(np.mean(column["reached_cutoff"]))
        metrics[f"{name}/best_val_acc_min"] = float(np.nanmin(column["best_val_acc"]))
        metrics[f"{name}/best_val_acc_max"] = float(np.nanmax(column["best_val_acc"]))
        metrics[f"{name}/runs"] = float(len(runs))
        m = lambda k: f"{_fmt(metrics[f'{name}/{k}_median'])} [{_fmt(metrics[f'{name}/{k}_q25'])}, {_fmt(metrics[f'{name}/{k}_q75'])}]"
        rows.append(f"| {name} | {len(runs)} | {m('val_error')} | {m('epochs_to_cutoff')} | "
                    f"{metrics[f'{name}/reached_cutoff_fraction']:.0%} | "
                    f"{_fmt(metrics[f'{name}/best_val_acc_min'])} / {_fmt(metrics[f'{name}/best_val_acc_max'])} |")
    table = "\n".join(rows)
    if pairs:
        tests = []
        for a, b in pairs:
            for key in COMPARED_METRICS:
                values = lambda c: [r[key] for r in records if r["condition"] == c]
                tests.append((a, b, key, mann_whitney(values(a), values(b))))
        adjusted = holm([p for *_, p in tests])
        comparison_rows = ["| A | B | metric | median A − B | Mann-Whitney p | Holm p |", "|---|---|---|---|---|---|"]
        for (a, b, key, p), p_holm in zip(tests, adjusted):
            difference = metrics[f"{a}/{key}_median"] - metrics[f"{b}/{key}_median"]
            metrics[f"{a}_vs_{b}/{key}_mwu_p"] = p
            metrics[f"{a}_vs_{b}/{key}_mwu_p_holm"] = p_holm
            comparison_rows.append(f"| {a} | {b} | {key} | {_fmt(difference)} | {_fmt(p)} | {_fmt(p_holm)} |")
        table += "\n\n" + "\n".join(comparison_rows)
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
