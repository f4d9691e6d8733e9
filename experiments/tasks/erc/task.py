"""ERC task: CMATH and baselines for emotion recognition in conversation (IEMOCAP, MELD, synthetic).

One job trains every condition of `cfg.erc.conditions` for `cfg.task.num_seeds` seeds on the same
data. A condition names a model node (`main` = cfg.model, otherwise `cfg.erc.models.<name>`) and
optional dotted overrides (`set`), so an ablation is one line of config. Each fit scores the
validation and test splits every epoch; a run's reported figures are the test metrics at the epoch
with the best validation metric (`task.select_on`, ties -> earliest), and, labelled as such, the
maximum test weighted F1 over epochs (the protocol of SDT and many ERC papers, which has no
validation split). Metrics: medians and quartiles over seeds per condition.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from common.errors import UserError
from experiments.analysis.tables import markdown_table
from experiments.core.run_context import RunContext
from experiments.core.task import TaskResult, job_seeds
from experiments.core.training import build_trainer
from models.erc.lit_module import ERCLitModule

log = logging.getLogger(__name__)
SUMMARY = ("test_weighted_f1", "test_accuracy", "test_macro_f1", "val_weighted_f1", "test_weighted_f1_max_epoch")
WITH_QUARTILES = ("test_weighted_f1", "test_accuracy", "test_macro_f1")


def condition_models(cfg: DictConfig) -> dict[str, DictConfig]:
    """name -> model node for every condition (with its `set` overrides applied to a copy); null drops one."""
    conditions = (cfg.get("erc") or {}).get("conditions") or {}
    if not conditions:
        raise UserError("erc.conditions is empty: choose a condition set, e.g. erc=compare")
    shared = shared_protocol(cfg)
    models = {}
    for name, spec in conditions.items():
        if spec is None:  # `erc.conditions.<name>: null` drops a condition of the chosen set
            continue
        unknown = set(spec or {}) - {"model", "set"}
        if unknown:
            raise UserError(f"erc.conditions.{name}: unknown keys {sorted(unknown)} (valid: model, set)")
        source = (spec or {}).get("model", "main")
        if source != "main" and source not in (cfg.erc.get("models") or {}):
            raise UserError(
                f"erc.conditions.{name}.model={source!r}: not 'main' nor one of erc.models {sorted(cfg.erc.get('models') or {})}"
            )
        # a copy of the whole config that keeps its interpolations, so a key set here (lr) reaches the keys that
        # interpolate it (optimizer.lr: ${..lr}) before the node is resolved
        root = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
        node = root.model if source == "main" else root.erc.models[source]
        for key, value in shared.items():
            if OmegaConf.select(node, key, default="__absent__") != "__absent__":
                OmegaConf.update(node, key, value, merge=False)
        for key, value in ((spec or {}).get("set") or {}).items():
            if OmegaConf.select(node, key, default="__absent__") == "__absent__":
                raise UserError(f"erc.conditions.{name}.set.{key}: no such key in model {source}")
            OmegaConf.update(node, key, value, merge=False)
        models[str(name)] = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    return models


def shared_protocol(cfg: DictConfig) -> dict[str, Any]:
    """`erc.shared`: dotted model keys (lr, weight_decay, max_epochs, network.temperature, ...) set for every
    condition whose model has the key, so one experiment trains all its conditions under the same protocol."""
    node = (cfg.get("erc") or {}).get("shared")
    shared = dict(_dotted(OmegaConf.to_container(node, resolve=True))) if node else {}
    conditions = (cfg.get("erc") or {}).get("conditions") or {}
    sources = {(spec or {}).get("model", "main") for spec in conditions.values() if spec is not None}
    nodes = [cfg.model if s == "main" else (cfg.erc.get("models") or {}).get(s) for s in sources]
    for key in shared:
        if not any(n is not None and OmegaConf.select(n, key, default="__absent__") != "__absent__" for n in nodes):
            raise UserError(f"erc.shared.{key}: no condition's model has this key; check its spelling")
    return shared


def _dotted(node: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested keys as dotted ones (`+erc.shared.network.temperature=2` sets that key, not the whole `network`)."""
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _dotted(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def best_epoch_index(history: Sequence[dict[str, float]], key: str) -> int:
    """The epoch with the highest `key`, the earliest on ties."""
    if not history:
        raise RuntimeError("no validation epochs were recorded")
    if key not in history[0]:
        raise UserError(
            f"task.select_on={key!r} is not a per-epoch metric (known: {sorted(k for k in history[0] if k.startswith('val_'))})"
        )
    return max(range(len(history)), key=lambda i: (history[i][key], -i))


def select_epoch(history: Sequence[dict[str, float]], key: str) -> dict[str, float]:
    """The epoch row with the highest `key` (earliest on ties) plus the max-over-epochs test w-F1."""
    row = dict(history[best_epoch_index(history, key)])
    row["test_weighted_f1_max_epoch"] = max(h["test_weighted_f1"] for h in history)
    row["best_epoch"] = float(row.pop("epoch"))  # a metric (float), not a factor for experiments.analysis.aggregate
    return row


def fit_one(
    cfg: DictConfig, ctx: RunContext, model: DictConfig, datamodule, fit_name: str, seed: int
) -> tuple[ERCLitModule, float]:
    torch.manual_seed(seed)
    datamodule.seed = seed
    try:
        network = instantiate(model.network, **datamodule.network_kwargs)
    except ValueError as exc:
        raise UserError(f"{fit_name}: {exc}") from None
    epochs = int(model.get("max_epochs") or cfg.task.max_epochs)
    schedule = cfg.task.get("lr_schedule")  # a protocol choice: the same for every condition
    module = ERCLitModule(
        network,
        instantiate(model.optimizer),
        datamodule.corpus.label_names,
        datamodule.class_weights,
        scheduler=instantiate(schedule, T_max=epochs) if schedule else None,
    )
    trainer, ckpt_path = build_trainer(cfg, ctx, fit_name, max_epochs=epochs)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return module, time.perf_counter() - start


def summarize(records: list[dict[str, Any]], conditions: Sequence[str], label_names: Sequence[str]) -> dict[str, float]:
    metrics = {}
    for name in conditions:
        rows = [r for r in records if r["condition"] == name]
        for key in SUMMARY + tuple(f"test_f1_{c}" for c in label_names):
            values = np.array([r[key] for r in rows], dtype=float)
            metrics[f"{name}/{key}_median"] = float(np.median(values))
            if key in WITH_QUARTILES:
                metrics[f"{name}/{key}_q25"] = float(np.percentile(values, 25))
                metrics[f"{name}/{key}_q75"] = float(np.percentile(values, 75))
    return metrics


def results_table(
    metrics: dict[str, float], conditions: Sequence[str], label_names: Sequence[str], runs: int, title: str, select_on: str
) -> str:
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    header = [
        "condition",
        "test w-F1",
        "test acc",
        "test macro-F1",
        "val w-F1",
        "max-epoch test w-F1",
        *(f"F1 {c}" for c in label_names),
    ]
    rows = []
    for name in conditions:
        m = lambda k, name=name: metrics[f"{name}/{k}"]  # noqa: E731
        rows.append(
            [
                name,
                f"{pct(m('test_weighted_f1_median'))} [{pct(m('test_weighted_f1_q25'))}, {pct(m('test_weighted_f1_q75'))}]",
                f"{pct(m('test_accuracy_median'))} [{pct(m('test_accuracy_q25'))}, {pct(m('test_accuracy_q75'))}]",
                f"{pct(m('test_macro_f1_median'))} [{pct(m('test_macro_f1_q25'))}, {pct(m('test_macro_f1_q75'))}]",
                pct(m("val_weighted_f1_median")),
                pct(m("test_weighted_f1_max_epoch_median")),
                *(pct(m(f"test_f1_{c}_median")) for c in label_names),
            ]
        )
    protocol = (
        f"Test figures at the epoch chosen on {select_on}; median [IQR] over {runs} seeds, in %. "
        "'max-epoch' = maximum test w-F1 over epochs (the protocol of SDT and many ERC papers; optimistic, not validation-selected)."
    )
    return f"{title}\n\n{protocol}\n\n" + markdown_table(header, rows)


def history_csv(history: Sequence[dict[str, float]]) -> str:
    keys = list(history[0]) if history else []
    return ",".join(keys) + "\n" + "".join(",".join(f"{row.get(k, float('nan')):.6g}" for k in keys) + "\n" for row in history)


def predictions_csv(
    predictions: Sequence[tuple[str, int, int, int]], dialogues: dict[str, Any], label_names: Sequence[str]
) -> str:
    """One row per utterance: its corpus id, the true label and the prediction."""
    rows = [
        f"{dialogues[d].utterance_id(t)},{label_names[y]},{label_names[p]}\n"
        for d, t, y, p in sorted(predictions, key=lambda x: x[:2])
    ]
    return "utterance_id,label,prediction\n" + "".join(rows)


def confusion(predictions: Sequence[tuple[str, int, int, int]], num_classes: int) -> np.ndarray:
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    for _, _, y, p in predictions:
        counts[y, p] += 1
    return counts


def confusion_figure(counts: np.ndarray, label_names: Sequence[str], title: str):
    """Rows = true class, normalised per row; cells show the share and the count."""
    from matplotlib.figure import Figure

    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure = Figure(figsize=(1.2 + 0.7 * len(label_names), 1.0 + 0.6 * len(label_names)))
    axes = figure.subplots()
    image = axes.imshow(shares, vmin=0, vmax=1, cmap="Blues")
    for (i, j), share in np.ndenumerate(shares):
        axes.text(
            j, i, f"{share:.2f}\n{counts[i, j]}", ha="center", va="center", fontsize=7, color="white" if share > 0.5 else "black"
        )
    axes.set_xticks(range(len(label_names)), label_names, rotation=45, fontsize=7)
    axes.set_yticks(range(len(label_names)), label_names, fontsize=7)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title, fontsize=8)
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    return figure


def run(cfg: DictConfig, ctx: RunContext) -> TaskResult:
    models = condition_models(cfg)
    if cfg.task.get("num_threads"):
        torch.set_num_threads(int(cfg.task.num_threads))  # small models: extra threads only contend on busy CPUs
    seeds = job_seeds(cfg, ctx.limit(cfg.task.num_seeds))
    datamodule = instantiate(cfg.dataset, limit=cfg.task.get("limit"))
    label_names = datamodule.corpus.label_names
    dialogues = {d.id: d for split in datamodule.corpus.splits.values() for d in split}
    select_on = str(cfg.task.select_on)
    records = []
    for name, model in models.items():
        test_confusion = np.zeros((len(label_names), len(label_names)), dtype=np.int64)
        for seed in seeds:
            fit_name = f"{name}_seed{seed}"
            module, seconds = fit_one(cfg, ctx, model, datamodule, fit_name, seed)
            ctx.write_artifact(f"history/{fit_name}.csv", history_csv(module.history))
            chosen = select_epoch(module.history, select_on)
            selected = module.predictions[best_epoch_index(module.history, select_on)]
            if selected.get("test"):
                ctx.write_artifact(f"predictions/{fit_name}.csv", predictions_csv(selected["test"], dialogues, label_names))
                test_confusion += confusion(selected["test"], len(label_names))
            record = {
                "condition": name,
                "seed": seed,
                "dataset": str(cfg.dataset.name),
                **chosen,
                "fit_seconds": seconds,
                "epochs": float(len(module.history)),
            }
            log.info(
                "%s: test w-F1 %.4f acc %.4f at epoch %d (%s %.4f)",
                fit_name,
                chosen["test_weighted_f1"],
                chosen["test_accuracy"],
                chosen["best_epoch"],
                select_on,
                chosen[select_on],
            )
            records.append(record)
        if test_confusion.sum():
            title = f"{name}: test, epoch chosen on {select_on}, {len(seeds)} seeds summed"
            ctx.save_figure(confusion_figure(test_confusion, label_names, title), f"confusion_{name}")
    metrics = summarize(records, list(models), label_names)
    title = f"### ERC: {cfg.dataset.name}, {len(seeds)} seeds per condition"
    shared = shared_protocol(cfg)
    if shared:
        title += "\n\nSet for every condition (erc.shared): " + ", ".join(f"{k}={v}" for k, v in shared.items())
    return TaskResult(
        metrics=metrics, table=results_table(metrics, list(models), label_names, len(seeds), title, select_on), records=records
    )
