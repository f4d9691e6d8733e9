"""Modality-quality analysis: how much each condition loses when one modality is degraded at test time.

Input: the jobs of `erc_cmath_*_modality_quality` sweeps (one job per degraded modality and noise level; a
folder of links to several sweeps reads as one). Training, validation, seeds and inits are the same in every
job, so a seed's loss at a level is its clean score minus its degraded score, and two conditions' losses
are paired by seed. For every degraded modality and noise level > 0 the reference condition's loss is tested
against each other condition's (Wilcoxon signed-rank over seeds, two-sided, Holm over the table).

    python -m experiments.tasks.erc.quality <sweep dir> --metric test_accuracy --reference cmath_central_text
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UserError, print_error
from experiments.analysis.aggregate import collect_records
from experiments.analysis.stats import holm, wilcoxon_paired

MODALITY, NOISE = "dataset.degrade.modality", "dataset.degrade.noise_std"


def _scores(records: list[dict[str, Any]], metric: str) -> dict[tuple[str, str | None, float], dict[int, float]]:
    """(condition, degraded modality, noise) -> seed -> metric; two records for one cell is an error."""
    scores: dict[tuple[str, str | None, float], dict[int, float]] = {}
    for rec in records:
        if metric not in rec:
            raise UserError(f"--metric {metric}: not a metric of the records (e.g. test_accuracy)")
        if NOISE not in rec:
            raise UserError(f"a job without a {NOISE} override: pass the sweep dir of a modality-quality experiment")
        key = (rec["condition"], rec.get(MODALITY), float(rec[NOISE]))
        cell = scores.setdefault(key, {})
        if int(rec["seed"]) in cell:
            raise UserError(f"two records for {key} seed {rec['seed']}: the folder holds a job twice")
        cell[int(rec["seed"])] = float(rec[metric])
    return scores


def losses(records: list[dict[str, Any]], metric: str) -> dict[tuple[str, str, float], dict[int, float]]:
    """(condition, modality, noise > 0) -> seed -> clean score minus degraded score. With noise 0 the data are
    clean whatever the modality, so one clean job serves every degraded modality."""
    scores = _scores(records, metric)
    clean = {cond: seeds for (cond, _, noise), seeds in scores.items() if noise == 0.0}
    out = {}
    for (cond, modality, noise), seeds in scores.items():
        if noise == 0.0:
            continue
        if cond not in clean:
            raise UserError(f"no clean job ({NOISE}=0.0) for condition {cond!r}: run level 0 as well")
        out[(cond, modality, noise)] = {s: clean[cond][s] - v for s, v in seeds.items() if s in clean[cond]}
    return out


def compare_losses(drops: dict[tuple[str, str, float], dict[int, float]], reference: str) -> list[dict[str, Any]]:
    """One row per (modality, noise, other condition): median losses, seeds where the reference loses less,
    Wilcoxon p and Holm p over all rows."""
    rows = []
    for (cond, modality, noise), ref in sorted(drops.items(), key=lambda kv: (str(kv[0][1]), kv[0][2], kv[0][0])):
        if cond != reference:
            continue
        for (other, m, n), theirs in sorted(drops.items()):
            if (m, n) != (modality, noise) or other == reference:
                continue
            p, pairs = wilcoxon_paired(ref, theirs)
            shared = [s for s in ref if s in theirs]
            rows.append(
                {
                    "modality": modality,
                    "noise_std": noise,
                    "reference": reference,
                    "other": other,
                    "reference_loss_median": float(np.median(list(ref.values()))),
                    "other_loss_median": float(np.median(list(theirs.values()))),
                    "reference_loses_less": sum(ref[s] < theirs[s] for s in shared),
                    "pairs": pairs,
                    "p": p,
                }
            )
    for row, adjusted in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = adjusted
    return rows


def markdown(rows: Sequence[dict[str, Any]], metric: str) -> str:
    fmt = lambda v: "nan" if math.isnan(v) else f"{v:.3g}"  # noqa: E731
    lines = [
        f"Loss of {metric} (clean minus degraded, points) under test-time noise, median over seeds; "
        "Wilcoxon signed-rank paired by seed, two-sided, Holm over the table.",
        "",
        "| degraded | noise std | reference loss | other | other loss | reference loses less (seeds) | p | Holm p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['modality']} | {r['noise_std']:g} | {100 * r['reference_loss_median']:.1f} | {r['other']} | "
            f"{100 * r['other_loss_median']:.1f} | {r['reference_loses_less']} of {r['pairs']} | {fmt(r['p'])} | "
            f"{fmt(r['p_holm'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.tasks.erc.quality", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--metric", default="test_accuracy")
    parser.add_argument("--reference", default="cmath_central_text", help="the condition whose loss is tested")
    parser.add_argument("--out", type=Path, help="output dir (default: <sweep_dir>/quality)")
    args = parser.parse_args(argv)
    try:
        records, incomplete = collect_records(args.sweep_dir)
        drops = losses(records, args.metric)
        if not any(cond == args.reference for cond, _, _ in drops):
            raise UserError(f"--reference {args.reference}: no such condition (have {sorted({c for c, _, _ in drops})})")
        rows = compare_losses(drops, args.reference)
    except UserError as exc:
        print_error(str(exc))
        return 2
    out = args.out or args.sweep_dir / "quality"
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, args.metric) + (f"\n{incomplete} incomplete jobs left out.\n" if incomplete else "")
    (out / "losses.md").write_text(text)
    with open(out / "losses.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["modality"])
        writer.writeheader()
        writer.writerows(rows)
    with open(out / "losses_per_seed.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["condition", "modality", "noise_std", "seed", f"{args.metric}_loss"])
        for (cond, modality, noise), seeds in sorted(drops.items()):
            writer.writerows([cond, modality, noise, s, f"{v:.6g}"] for s, v in sorted(seeds.items()))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
