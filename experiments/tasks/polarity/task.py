"""Polarity task: Freeze-SGD vs Fluid training with sign templates (Wang et al., ICML 2023) and
non-negative networks (arXiv 2208.03211).

One job trains every condition of `cfg.polarity.conditions` for `cfg.task.num_seeds` seeds. Runs of
one seed share their initial weights and training data, so conditions are compared pairwise. A network
that supports populations (the XOR MLP) trains all runs in one Lightning fit; other networks train one
fit per (seed, condition). Metrics follow the paper: validation error at the first epoch of minimum
validation loss, epochs until validation accuracy first exceeds `cfg.task.cutoff` (censored at
max_epochs + 1 for runs that never do), and the fraction of runs exceeding it; medians and IQR over
seeds, Wilcoxon signed-rank (paired by seed) and Mann-Whitney U between named pairs, each Holm-corrected.
Weights that disagree with their template start aligned by `polarity.align` (flip | reset).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from common.errors import UserError
from experiments.core.run_context import RunContext
from experiments.core.task import TaskResult, job_seeds
from experiments.core.training import build_trainer
from experiments.core.validation.config_check import check_target_node
from experiments.tasks.polarity.report import learning_curve_figure, summarize_conditions
from models.polarity.freeze_sgd import SignConstraint
from models.polarity.lit_module import PolarityLitModule
from models.polarity.run_metrics import run_metrics
from models.polarity.sign_templates import (
    align_to_template,
    constrained_parameters,
    load_matching,
    make_template,
    transferred_names,
)

log = logging.getLogger(__name__)
INITS = ("fresh", "source")
# The source network starts from its own random init: were it the target's fresh init (both seeded
# with cfg.seed), IN-Polarity would be "the target's init with the signs training flipped", not the
# paper's independent pretrained network.
SOURCE_INIT_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class Condition:
    """One arm of the experiment: a sign template, Freeze-SGD on/off, its reset rule, the init."""

    name: str
    template: str
    freeze: bool
    reset: str
    init: str = "fresh"


def parse_conditions(pcfg: DictConfig) -> list[Condition]:
    conditions = []
    for name, spec in (pcfg.get("conditions") or {}).items():
        unknown = set(spec) - {"template", "freeze", "reset", "init"}
        if unknown:
            raise UserError(f"polarity.conditions.{name}: unknown keys {sorted(unknown)} (valid: template, freeze, reset, init)")
        condition = Condition(
            str(name),
            spec.get("template", "random"),
            bool(spec.get("freeze", False)),
            spec.get("reset", pcfg.reset),
            spec.get("init", "fresh"),
        )
        if condition.init not in INITS:
            raise UserError(f"polarity.conditions.{name}.init={condition.init!r} must be one of {INITS}")
        conditions.append(condition)
    if not conditions:
        raise UserError("polarity.conditions is empty: choose a condition set, e.g. polarity=xor")
    return conditions


def build_network(cfg: DictConfig, datamodule, **extra) -> nn.Module:
    return instantiate(cfg.model.network, **datamodule.network_kwargs, **extra)


ALIGNMENTS = ("flip", "reset")
# Seeds the `reset` alignment's posRand draws apart from the constraint's own stream (same seed otherwise).
ALIGN_SEED_OFFSET = 7_919


def prepare_runs(
    network: nn.Module,
    conditions: Sequence[Condition],
    source_state: Mapping[str, Tensor] | None,
    eps: float,
    seed: int,
    constrain_new_layers: bool = True,
    align: str = "flip",
) -> list[SignConstraint]:
    """Set initial weights for each run and return the Freeze-SGD constraints.

    `conditions[r]` is run r's condition; for a population network the runs are its leading axis,
    otherwise there is exactly one run. Templates are computed on the fresh weights (so random
    templates are the run's own init signs); weights that disagree with their template are then
    aligned: `flip` (W <- |W| * S, the CV reference) or `reset` (the condition's reset rule, as the XOR
    reference's on_train_begin does: posRand leaves them at S * U(0, eps)). IN-Weight runs then copy
    the source weights, and frozen runs get a constraint (entries of unfrozen runs are 0 = free).
    """
    if align not in ALIGNMENTS:
        raise UserError(f"polarity.align={align!r} must be one of {ALIGNMENTS}")
    population = getattr(network, "population", False)
    if source_state is not None:
        check_transfer(network, source_state)
    by_kind = {c.template: make_template(c.template, network, source_state) for c in conditions}
    new_layers = set()
    if source_state is not None and not constrain_new_layers:
        new_layers = set(constrained_parameters(network)) - set(transferred_names(network, source_state))

    def per_run(select: Callable[[Condition, Tensor], Tensor]) -> dict[str, Tensor]:
        stacked = {}
        for name in constrained_parameters(network):
            rows = [
                select(c, by_kind[c.template][name][r] if population else by_kind[c.template][name])
                for r, c in enumerate(conditions)
            ]
            stacked[name] = torch.stack(rows) if population else rows[0]
        return stacked

    if align == "flip":
        align_to_template(network, per_run(lambda c, t: t))
    else:
        for reset in dict.fromkeys(c.reset for c in conditions):
            templates = per_run(lambda c, t, reset=reset: t if c.reset == reset else torch.zeros_like(t))
            SignConstraint(templates, reset=reset, eps=eps, seed=seed + ALIGN_SEED_OFFSET).project_(network)
    if any(c.init == "source" for c in conditions):
        if population:
            raise UserError("init: source (IN-Weight) is not supported for population networks")
        load_matching(network, source_state)
    constraints = []
    for reset in dict.fromkeys(c.reset for c in conditions if c.freeze):
        templates = per_run(lambda c, t, reset=reset: t if (c.freeze and c.reset == reset) else torch.zeros_like(t))
        for name in new_layers:
            templates[name] = torch.zeros_like(templates[name])
        constraints.append(SignConstraint(templates, reset=reset, eps=eps, seed=seed))
    return constraints


def check_transfer(network: nn.Module, source_state: Mapping[str, Tensor]) -> None:
    """Say how many layers take the source's signs / weights; stop when none does (another architecture)."""
    layers = constrained_parameters(network)
    matched = transferred_names(network, source_state)
    if not matched:
        raise UserError(
            f"polarity.source: no layer of the source network matches this network (0 of {len(layers)} weight "
            "shapes agree); the source is another architecture: use a checkpoint of model.network"
        )
    log.info("transfer: %d of %d layers take the source network's signs / weights", len(matched), len(layers))


def fit(
    cfg: DictConfig,
    ctx: RunContext,
    fit_name: str,
    network: nn.Module,
    datamodule,
    constraints: Sequence[SignConstraint],
    labels: Sequence[str],
    data_index: Sequence[int] | None = None,
    max_epochs: int | None = None,
) -> PolarityLitModule:
    """One Lightning fit (resumed from checkpoints/<fit_name>/last.ckpt when present)."""
    epochs = int(max_epochs or cfg.trainer.get("max_epochs") or 1)
    module = PolarityLitModule(network, instantiate(cfg.model.optimizer), constraints, labels, data_index, history_len=epochs)
    overrides = {"max_epochs": epochs} if max_epochs else {}
    trainer, ckpt_path = build_trainer(cfg, ctx, fit_name, **overrides)
    if ckpt_path:
        log.info("%s: resuming from %s", fit_name, ckpt_path)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return module


def load_source_state(path: str) -> dict[str, Tensor]:
    """A source network's weights from a .ckpt of this task (keys `network.*`) or a plain state_dict."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"polarity.source.checkpoint={path}: no such file") from None
    except Exception as exc:
        raise UserError(
            f"polarity.source.checkpoint={path}: not a readable torch checkpoint ({exc.__class__.__name__})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = {k.removeprefix("network."): v for k, v in state["state_dict"].items() if k.startswith("network.")}
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"polarity.source.checkpoint={path}: expected a state_dict of tensors")
    return state


def source_dataset_config(cfg: DictConfig) -> DictConfig:
    """The source network's data module config: `polarity.source.dataset` when it names its own `_target_`
    (another data set, e.g. MNIST for Fashion-MNIST), else the target's `dataset` with those overrides
    (other classes, another pool). Errors about it name `polarity.source.dataset.*`, not `dataset.*`."""
    spec = OmegaConf.to_container(cfg.polarity.source.dataset, resolve=True)
    if "_target_" not in spec:
        spec = {**OmegaConf.to_container(cfg.dataset, resolve=True), **spec}
    merged = OmegaConf.create(spec)
    if _accepts_config_key(merged):
        merged.config_key = "polarity.source.dataset"
    return merged


def check_disjoint_pools(cfg: DictConfig) -> None:
    """A source trained on the target's own data set must not have seen the target's training pool
    (the paper's source is ImageNet, disjoint from the target task). Pools are fraction ranges of one
    fixed permutation, so disjoint ranges give disjoint images (data.images.pool_indices)."""
    if "_target_" in cfg.polarity.source.dataset:
        return  # another data set (e.g. MNIST -> Fashion-MNIST): nothing to overlap
    source, target = source_dataset_config(cfg).get("pool", (0.0, 1.0)), cfg.dataset.get("pool", (0.0, 1.0))
    if max(float(source[0]), float(target[0])) < min(float(source[1]), float(target[1])):
        raise UserError(
            f"dataset.pool={list(target)} overlaps polarity.source.dataset.pool={list(source)}: the target "
            "would train on images the source saw; use adjacent ranges, e.g. [0.0, 0.5] and [0.5, 1.0]"
        )


def _accepts_config_key(node: DictConfig) -> bool:
    return "config_key" in inspect.signature(get_class(node._target_)).parameters


def train_source(cfg: DictConfig, ctx: RunContext) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Train the source network (the paper's ImageNet AlexNet) on `polarity.source.dataset`: either
    overrides of the target data set (a part of it) or a full data-module config with `_target_`."""
    source = cfg.polarity.source
    if source.get("checkpoint"):
        return load_source_state(source.checkpoint), {}
    datamodule = instantiate(source_dataset_config(cfg), subset_seed=cfg.seed)
    datamodule.setup("fit")
    torch.manual_seed(SOURCE_INIT_SEED_OFFSET + cfg.seed)  # never the init of a target run
    network = build_network(cfg, datamodule)
    module = fit(cfg, ctx, "source", network, datamodule, [], ["source"], max_epochs=int(source.max_epochs))
    state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
    torch.save(state, ctx.output_dir / "source_network.pt")
    loss, acc = module.curves()
    return state, {
        f"source/{k}": v
        for k, v in run_metrics(loss[:, 0], acc[:, 0], cfg.task.cutoff).items()
        if k in ("val_error", "final_val_error")
    }


@dataclass
class Collected:
    """One record (condition, seed, run metrics) and one validation-accuracy curve per trained run."""

    cutoff: float
    records: list[dict[str, Any]] = field(default_factory=list)
    curves: list[tuple[str, Any]] = field(default_factory=list)

    def add(self, module: PolarityLitModule, runs: Sequence[tuple[Condition, int]]) -> None:
        loss, acc = module.curves()
        for r, (condition, seed) in enumerate(runs):
            self.records.append({"condition": condition.name, "seed": seed, **run_metrics(loss[:, r], acc[:, r], self.cutoff)})
            self.curves.append((condition.name, acc[:, r]))


def read_alignment(pcfg: DictConfig) -> str:
    align = str(pcfg.get("align", "flip"))
    if align not in ALIGNMENTS:
        raise UserError(f"polarity.align={align!r} must be one of {ALIGNMENTS}")
    return align


def source_for(cfg: DictConfig, ctx: RunContext, conditions: Sequence[Condition]) -> tuple[Any, dict[str, float]]:
    """The source network's weights (trained here or loaded) when a condition transfers from it, with its metrics."""
    pcfg = cfg.polarity
    if not any(c.template == "transfer" or c.init == "source" for c in conditions):
        return None, {}
    if not pcfg.source.get("checkpoint"):
        check_target_node(source_dataset_config(cfg), "polarity.source.dataset")
        check_disjoint_pools(cfg)
    return train_source(cfg, ctx)


def train_population(
    cfg: DictConfig, ctx: RunContext, conditions: list[Condition], seeds: list[int], source_state: Any, align: str, out: Collected
) -> None:
    """Every (condition, seed) run of the job stacked into one batched network and trained in one fit."""
    pcfg = cfg.polarity
    if "seeds" not in inspect.signature(get_class(cfg.dataset._target_)).parameters:
        raise UserError(
            f"model={cfg.model.name} trains a population on XOR-style data, not on dataset={cfg.dataset.name}; "
            "use model=polarity_cnn or model=polarity_alexnet for images"
        )
    runs = [(c, s) for c in conditions for s in seeds]
    datamodule = instantiate(cfg.dataset, seeds=seeds)
    network = build_network(cfg, datamodule, num_runs=len(runs), init_seeds=[s for _, s in runs])
    constrain_new = bool(pcfg.get("freeze_new_layers", True))
    constraints = prepare_runs(network, [c for c, _ in runs], source_state, pcfg.eps, cfg.seed, constrain_new, align)
    data_index = [seeds.index(s) for _, s in runs]
    out.add(fit(cfg, ctx, "population", network, datamodule, constraints, [c.name for c, _ in runs], data_index), runs)


def train_one_by_one(
    cfg: DictConfig, ctx: RunContext, conditions: list[Condition], seeds: list[int], source_state: Any, align: str, out: Collected
) -> None:
    """One fit per (seed, condition); every condition of a seed starts from the same fresh init and data."""
    pcfg = cfg.polarity
    constrain_new = bool(pcfg.get("freeze_new_layers", True))
    for seed in seeds:
        datamodule = instantiate(cfg.dataset, subset_seed=seed)
        datamodule.setup("fit")
        for condition in conditions:
            torch.manual_seed(seed)  # same fresh init for every condition of this seed
            network = build_network(cfg, datamodule)
            constraints = prepare_runs(network, [condition], source_state, pcfg.eps, seed, constrain_new, align)
            module = fit(cfg, ctx, f"{condition.name}_seed{seed}", network, datamodule, constraints, [condition.name])
            out.add(module, [(condition, seed)])


def table_header(cfg: DictConfig, seeds: list[int], align: str, cutoff: float) -> str:
    """The protocol above the results table: metric definitions, censoring, alignment and data draws."""
    epochs = int(cfg.trainer.get("max_epochs") or 1)
    data = (
        (
            "one train/validation draw for all runs (dataset.data_seed)"
            if cfg.dataset.get("data_seed") is not None
            else "one train/validation draw per seed"
        )
        if "data_seed" in cfg.dataset
        else "training subset seeded per seed"
    )
    return (
        f"### Polarity: {cfg.dataset.name}, {cfg.model.name}, {len(seeds)} seeds per condition\n\n"
        f"Validation error at the first epoch of minimum validation loss; epochs until validation accuracy "
        f"first exceeds {cutoff:g} (strictly, as the reference), runs that never do counted as censored at "
        f"max_epochs + 1 = {epochs + 1}. Initial alignment: {align}. Data: {data}.\n\n"
    )


def run(cfg: DictConfig, ctx: RunContext) -> TaskResult:
    pcfg, cutoff = cfg.polarity, float(cfg.task.cutoff)
    conditions = parse_conditions(pcfg)
    seeds = job_seeds(cfg, ctx.limit(cfg.task.num_seeds))
    align = read_alignment(pcfg)
    source_state, extra_metrics = source_for(cfg, ctx, conditions)
    out = Collected(cutoff)
    population = getattr(get_class(cfg.model.network._target_), "population", False)
    train = train_population if population else train_one_by_one
    train(cfg, ctx, conditions, seeds, source_state, align, out)
    pairs = [tuple(pair) for pair in (pcfg.get("compare") or [])]
    metrics, table = summarize_conditions(out.records, [c.name for c in conditions], pairs, cutoff)
    metrics.update(extra_metrics)
    figure = learning_curve_figure(out.curves, cutoff, title=f"{cfg.dataset.name}, {cfg.model.name}")
    ctx.save_figure(figure, "learning_curves")
    return TaskResult(metrics=metrics, table=table_header(cfg, seeds, align, cutoff) + table, records=out.records)
