"""Compare an in-process attack with the TCD authors' saved profiles of the same attack: profile length,
rating distribution, and undefended target HR@50 of the runs that used each.

    python -m experiments.tasks.recsys.compare_profiles --reference <authors' .npy> --max-rating 5 \
        --reference-runs <replay run dirs> --runs <in-process run dirs> --out results/recsys/<attack>_vs_authors.json

A run dir holds `metrics.json` and `artifacts/fake_profiles.csv` (user,item,rating). The verdict says whether
the generated runs' median HR@50 lies within the replays' seed spread (their min..max over seeds).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UserError, exit_on_user_error
from common.files import atomic_write_text


def profile_summary(profiles: np.ndarray) -> dict[str, Any]:
    """Length (ratings per profile: mean, min, max) and the share of each rating value over all profiles."""
    lengths = (profiles > 0).sum(1)
    values = profiles[profiles > 0]
    shares = {str(int(v)): round(float((values == v).mean()), 4) for v in np.unique(values)}
    return dict(
        profiles=int(len(profiles)),
        length_mean=round(float(lengths.mean()), 2),
        length_min=int(lengths.min()),
        length_max=int(lengths.max()),
        rating_mean=round(float(values.mean()), 4),
        rating_shares=shares,
    )


def run_profiles(run: Path, n_items: int) -> np.ndarray:
    """The fake profiles a run wrote, [fake users in order, n_items]."""
    path = run / "artifacts" / "fake_profiles.csv"
    if not path.is_file():
        raise UserError(f"{run}: no artifacts/fake_profiles.csv; pass run directories of the recsys task")
    rows = list(csv.DictReader(path.open()))
    users = sorted({int(r["user"]) for r in rows})
    index = {u: k for k, u in enumerate(users)}
    if any(int(r["item"]) >= n_items for r in rows):
        raise UserError(f"{run}: its profiles rate items beyond the reference's {n_items}; compare runs of the same data set")
    out = np.zeros((len(users), n_items))
    for r in rows:
        out[index[int(r["user"])], int(r["item"])] = float(r["rating"])
    return out


def run_hits(run: Path) -> dict[str, float]:
    if not (run / "metrics.json").is_file():
        raise UserError(f"{run}: no metrics.json; pass finished run directories of the recsys task")
    metrics = json.loads((run / "metrics.json").read_text())
    return {k: metrics[f"test/{k}"] for k in ("target_hr@50", "target_hits@50")}


def compare(reference: Path, max_rating: float, reference_runs: list[Path], runs: list[Path]) -> dict[str, Any]:
    if not reference.is_file():
        raise UserError(f"--reference {reference}: no such file (an authors' .npy under recsys/tcd_poison/)")
    authors = np.round(np.load(reference) * max_rating)
    generated = [run_profiles(r, authors.shape[1]) for r in runs]
    ref_hr = [run_hits(r)["target_hr@50"] for r in reference_runs]
    gen_hr = [run_hits(r)["target_hr@50"] for r in runs]
    median = float(np.median(gen_hr))
    return dict(
        reference=str(reference),
        authors=profile_summary(authors),
        generated=profile_summary(np.concatenate(generated)),
        undefended_target_hr50=dict(
            authors_replays=dict(zip([r.name for r in reference_runs], ref_hr)),
            generated=dict(zip([r.name for r in runs], gen_hr)),
            authors_hits=[run_hits(r)["target_hits@50"] for r in reference_runs],
            generated_hits=[run_hits(r)["target_hits@50"] for r in runs],
            generated_median=median,
            authors_range=[min(ref_hr), max(ref_hr)],
            within_seed_spread=bool(min(ref_hr) <= median <= max(ref_hr)),
        ),
    )


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--max-rating", type=float, required=True)
    parser.add_argument("--reference-runs", type=Path, nargs="+", required=True)
    parser.add_argument("--runs", type=Path, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = compare(args.reference, args.max_rating, args.reference_runs, args.runs)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def main(argv: list[str] | None = None) -> None:
    exit_on_user_error(lambda: _main(argv))


if __name__ == "__main__":
    main()
