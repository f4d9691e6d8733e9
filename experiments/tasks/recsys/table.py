"""Pivot `experiments.analysis.aggregate`'s summary.csv of a recsys sweep into attack x defence Markdown tables.

    python -m experiments.tasks.recsys.table results/recsys/ml100k_3pct/summary.csv [--metric target_hr@50 ...]

One table per metric: rows = attacks, columns = defences, cells = the median over seeds (one seed: the
value); an empty cell is a job that did not run or did not finish. A sweep that kept the attack (or the
defence) fixed has no such column in summary.csv: name it with --attack (--defense). Rows are named by
`attack_name`, so a replay of saved profiles (`attack=file`, one file per job) reads as aush, pga, ...;
where one attack was replayed at several sizes, its rows also give the fake-user count.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from common.errors import UserError, exit_on_user_error
from experiments.analysis.report import SUMMARY_FIELDS
from experiments.analysis.tables import markdown_table

ATTACKS = ["none", "random", "average", "bandwagon", "gradient", "coattack", "gcoattack", "aush", "pga", "tna"]
DEFENSES = ["none", "apr", "noise", "tcd"]


def factor(row: dict[str, str], name: str, fixed: str | None) -> str:
    """The row's attack or defence: its column, else the value the sweep kept fixed."""
    value = row.get(name) or fixed
    if value is None:
        raise UserError(f"summary.csv has no '{name}' column (the sweep kept it fixed): pass --{name} <its value>")
    return value


def attack_labels(rows: list[dict[str, str]], fixed: str | None) -> dict[int, tuple[str, tuple]]:
    """Row index -> (label, sort key): the attack's name, plus its fake-user count where rows of one attack
    differ in it (a replay of the same attack's files at two sizes)."""
    names = [row.get("attack_name") or factor(row, "attack", fixed) for row in rows]
    counts: dict[str, set[str]] = {}
    for name, row in zip(names, rows):
        counts.setdefault(name, set()).add(row.get("n_fake", ""))
    order = {name: ATTACKS.index(name) if name in ATTACKS else len(ATTACKS) + k for k, name in enumerate(dict.fromkeys(names))}
    out = {}
    for i, (name, row) in enumerate(zip(names, rows)):
        n_fake = row.get("n_fake", "")
        label = f"{name} ({n_fake} fake)" if len(counts[name]) > 1 else name
        out[i] = (label, (order[name], int(n_fake) if n_fake.isdigit() else 0))
    return out


def tables(summary: Path, metrics: list[str], attack: str | None = None, defense: str | None = None) -> str:
    if not summary.is_file():
        raise UserError(f"{summary} is not a file: run `python -m experiments.analysis.aggregate <sweep> --out <dir>` first")
    rows = list(csv.DictReader(summary.open()))
    have = {r["metric"] for r in rows}
    if missing := sorted(set(metrics) - have):
        raise UserError(
            f"{summary} has no metric {', '.join(missing)} (it has {', '.join(sorted(have))}): aggregate with --metric"
        )
    settings = setting_columns(rows)
    groups: dict[tuple[str, ...], list[dict[str, str]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[c] for c in settings), []).append(row)
    out = []
    for values, group in groups.items():
        heading = ", ".join(f"{c}={v}" for c, v in zip(settings, values))
        labels = attack_labels(group, attack)
        for metric in metrics:
            cell: dict[tuple[str, str], float] = {}
            sort_key: dict[str, tuple] = {}
            for i, r in enumerate(group):
                if r["metric"] != metric:
                    continue
                label, sort_key[label] = labels[i]
                key = (label, factor(r, "defense", defense))
                if key in cell:
                    raise UserError(
                        f"{summary}: two rows for attack={key[0]} defense={key[1]} ({metric}) differ in a column "
                        "the table cannot show; aggregate with that setting as a group column or keep it fixed"
                    )
                cell[key] = float(r["median"])
            defenses = [d for d in DEFENSES if any(k[1] == d for k in cell)]
            attacks = sorted(sort_key, key=sort_key.__getitem__)
            body = [[a, *(f"{cell[(a, d)]:.4g}" if (a, d) in cell else "" for d in defenses)] for a in attacks]
            title = f"**{metric}** (median over seeds" + (f"; {heading})" if heading else ")")
            out.append(f"{title}\n\n" + markdown_table(["attack", *defenses], body))
    return "\n\n".join(out) + "\n"


def setting_columns(rows: list[dict[str, str]]) -> list[str]:
    """Group columns other than attack and defence (e.g. `attack.size` of a sweep over sizes): one table per
    combination of their values, so cells of different settings are never merged."""
    known = set(SUMMARY_FIELDS) | {"attack", "defense", "attack_name", "defense_name", "n_fake", "attack.path", "attack.label"}
    return [c for c in (rows[0] if rows else {}) if c not in known]


def main() -> None:
    exit_on_user_error(_main)


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", type=Path)
    parser.add_argument("--metric", action="append", default=None)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--attack", help="the attack of a sweep that kept it fixed")
    parser.add_argument("--defense", help="the defence of a sweep that kept it fixed")
    args = parser.parse_args()
    text = tables(args.summary, args.metric or ["target_hr@50", "rmse", "loo_hr@10"], args.attack, args.defense)
    if args.out:
        args.out.write_text(text)  # before printing: a closed pipe (`| head`) must not lose the file
    print(text)


if __name__ == "__main__":
    main()
