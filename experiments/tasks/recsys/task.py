"""Recsys task: shilling attacks against MF and the defences none / APR / noise / TCD (TCD, WISE 2022;
Co-Attack and GCoAttack, World Wide Web 2023).

One job = one cell (attack, attack size, defence, model, data set, seed):
1. read the ratings (`dataset`, a `data.ratings` loader) and the target items (`task.targets`);
2. the attack (`attack.method`) writes n_fake = round(attack.size x n_users) fake profiles of
   `attack.filler` filler items (default: average profile length - #targets) + targets rated R; a replay
   (`attack=file`) injects the profiles of a saved file instead, whose row count is n_fake;
3. the defence (`defense.method`) trains 1 model (none, apr, noise) or 3 (tcd, tcd_paper) on real + fake
   ratings for `task.epochs` (or the defence's own `defense.epochs`, optimiser and reg) with a plain loop
   (models/recsys/training.py); model 0 is evaluated every epoch;
4. metrics.json: `test/*` at the last epoch (with the hit counts and, from a bootstrap over users
   (`task.bootstrap`), the target HR's interval), and `test_best_epoch/target_hr@50`, the target HR@50 at the
   epoch of minimum test RMSE (the reference's reading, 1.5-2x higher: an optimistic, test-chosen epoch).
Per-epoch metrics go to the loggers (series "epoch"); the fake profiles to artifacts/fake_profiles.csv.
Resume: the loop state is saved every epoch (`ctx.save_state("recsys")`) and picked up per `ckpt_path`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from common.errors import UserError
from common.files import atomic_write_with, writable_dir
from data.ratings import RatingData
from experiments.analysis.tables import markdown_table
from experiments.core.run_context import RunContext
from experiments.core.task import TaskResult
from models.recsys import metrics as M
from models.recsys.training import LoopStats, Samples, fit

log = logging.getLogger(__name__)
STATE = "recsys"


def resolve_targets(spec: Any, data: RatingData) -> list[int]:
    """`task.targets`: a set named in `dataset.targets` or a list of 0-indexed item ids in the catalogue."""
    sets = data.info.get("targets", {})
    if isinstance(spec, str):
        if spec not in sets:
            raise UserError(
                f"task.targets={spec!r} is not a target set of dataset {data.name} (known: {', '.join(sets) or 'none'}); "
                "name one or give a list of item ids"
            )
        items = list(sets[spec])
    else:
        items = [int(x) for x in spec]
    bad = [i for i in items if not 0 <= i < data.n_items]
    if not items or bad:
        raise UserError(f"task.targets: item ids {bad or items} are not in the catalogue [0, {data.n_items}) of {data.name}")
    return items


def attack_shape(cfg: DictConfig, ctx: RunContext, data: RatingData, targets: list[int], attack: Any) -> tuple[int, int]:
    """(n_fake, n_filler) from `attack.size` (fraction of users, in (0, 0.5]) and `attack.filler`; a replay's
    file fixes both (n_filler = its mean profile length - #targets, for the record)."""
    n_targets = len(targets)
    if not getattr(attack, "injects", True):
        return 0, 0
    if hasattr(attack, "profiles"):  # read and checked here, before anything trains
        if cfg.attack.get("size") is not None or cfg.attack.get("filler") is not None:
            raise UserError(
                f"attack={cfg.attack.name}: the file fixes the fake users and their fillers; "
                "drop attack.size and attack.filler (a sweep over attack.size cannot replay a file)"
            )
        fake = attack.profiles(data.n_items, torch.as_tensor(targets), data.max_rating)
        return ctx.limit(len(fake)), int(round(float((fake > 0).sum(1).float().mean()))) - n_targets
    size = float(cfg.attack.size)
    if not 0 < size <= 0.5:
        raise UserError(f"attack.size={size}: must be a fraction of users in (0, 0.5], e.g. 0.03 for 3 %")
    n_fake = ctx.limit(max(1, int(round(size * data.n_users))))  # debug=fast: a couple of fake users
    filler = cfg.attack.get("filler")
    if filler is None:
        filler = int(round(len(data.train[0]) / data.n_users)) - n_targets
    if not 0 < int(filler) <= data.n_items - n_targets:
        raise UserError(f"attack.filler={filler}: must be in [1, {data.n_items - n_targets}]")
    return n_fake, int(filler)


def evaluate(
    model: torch.nn.Module,
    data: RatingData,
    rated: torch.Tensor,
    targets: Sequence[int],
    ks: Sequence[int],
    loo_k: int,
    bootstrap: M.Bootstrap | None = None,
) -> dict[str, float]:
    """Every metric of model 0 on the real users (metrics.py); the target HR's interval with `bootstrap`."""
    with torch.no_grad():
        scores = model.full_scores()[: data.n_users]
    real_rated = rated[: data.n_users]
    out = M.target_hit_metrics(scores, real_rated, targets, ks, bootstrap)
    out["prediction_shift"] = M.prediction_shift(scores, real_rated, targets, data.max_rating)
    users, items, ratings = (torch.as_tensor(x) for x in data.test)
    out.update(M.rating_errors(scores, users, items, ratings.float(), data.max_rating))
    if data.test_negatives is not None:
        out[f"loo_hr@{loo_k}"] = M.loo_hit_rate(scores, users, items, torch.as_tensor(data.test_negatives), loo_k)
    return out


def cache_dir(cfg: DictConfig) -> Path:
    """`task.cache_dir` when writable (default under the data root), else ~/.cache/fivefold/recsys."""
    return writable_dir(cfg.task.cache_dir, Path.home() / ".cache" / "fivefold" / "recsys", "task.cache_dir")


def attack_seed(seed: int) -> int:
    """The profile generator's seed: derived from the run seed, apart from the training generator's stream."""
    return int(np.random.SeedSequence([seed, 0x5A7]).generate_state(1)[0])


def attack_code_digest() -> str:
    """A digest of the code that makes profiles (models/recsys), so cached profiles of older code are not reused."""
    digest = hashlib.sha256()
    for source in sorted(Path(M.__file__).parent.glob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())
    return digest.hexdigest()[:16]


def make_profiles(
    cfg: DictConfig,
    attack: Any,
    data: RatingData,
    train: torch.Tensor,
    targets: list[int],
    n_fake: int,
    n_filler: int,
) -> torch.Tensor:
    """The fake profiles; a model-based attack (`attack.cache`) reuses profiles cached for the same data,
    targets, attack settings, size, seed and attack code, so the defences of one sweep face the same profiles.

    Generation draws from its own generator (seeded from the run seed) and leaves torch's global state as it
    found it, so the training that follows is the same whether the profiles came from the cache or not."""
    if not n_fake:
        return torch.zeros(0, data.n_items)
    path = None
    if cfg.attack.get("cache"):
        key = json.dumps(
            dict(
                data=data.name,
                n=[data.n_users, data.n_items, len(data.train[0])],
                targets=targets,
                attack=OmegaConf.to_container(cfg.attack.method, resolve=True),
                n_fake=n_fake,
                n_filler=n_filler,
                seed=int(cfg.seed),
                limit=cfg.task.get("limit"),
                code=attack_code_digest(),
            ),
            sort_keys=True,
        )
        path = cache_dir(cfg) / f"profiles_{cfg.attack.name}_{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
        if path.is_file():
            log.info("attack %s: profiles from cache %s", cfg.attack.name, path)
            return torch.load(path)
    t0 = time.perf_counter()
    generator = torch.Generator().manual_seed(attack_seed(int(cfg.seed)))
    with torch.random.fork_rng(devices=[]):
        fake = attack.generate(torch.as_tensor(train), torch.as_tensor(targets), n_fake, n_filler, data.max_rating, generator)
    log.info("attack %s: %d fake profiles in %.1f s", cfg.attack.name, len(fake), time.perf_counter() - t0)
    if path is not None:
        atomic_write_with(path, lambda tmp: torch.save(fake, tmp))
    return fake


def profiles_csv(fake: torch.Tensor, first_user: int) -> str:
    rows, cols = fake.nonzero(as_tuple=True)
    lines = [f"{int(u) + first_user},{int(i)},{float(fake[u, i]):g}" for u, i in zip(rows, cols)]
    return "".join(line + "\n" for line in ["user,item,rating", *lines])


def results_table(cfg: DictConfig, metrics: dict[str, float], extra: dict[str, Any]) -> str:
    attack = cfg.attack.name if extra["attack_name"] == cfg.attack.name else f"{cfg.attack.name} ({extra['attack_name']})"
    head = (
        f"recsys: model={cfg.model.name} dataset={cfg.dataset.name} attack={attack} "
        f"(size {extra['attack_size']}, {extra['n_fake']} fake users x {extra['n_filler']} filler) "
        f"defense={cfg.defense.name} epochs={extra['epochs']} seed={cfg.seed}\n\n"
    )
    return head + markdown_table(["metric", "value"], [[k, f"{v:.4f}"] for k, v in sorted(metrics.items())])


@dataclasses.dataclass
class Poisoned:
    """The training matrix of real + fake users, and the samples the defence trains on."""

    fake: torch.Tensor
    matrix: torch.Tensor
    rated: torch.Tensor
    samples: Samples


@dataclasses.dataclass
class Loop:
    """What the training loop carries from epoch to epoch, and what a resume restores."""

    models: list[Any]
    optimizers: list[Any]
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    start_epoch: int = 0
    stats: LoopStats = dataclasses.field(default_factory=LoopStats)


def read_targets(cfg: DictConfig, data: RatingData) -> list[int]:
    spec = cfg.task.targets
    return resolve_targets(spec if isinstance(spec, str) else OmegaConf.to_object(spec), data)


def build_attack(cfg: DictConfig, ctx: RunContext) -> Any:
    attack = instantiate(cfg.attack.method)
    if hasattr(attack, "epochs"):  # surrogate models: debug=fast bounds their epochs too
        attack.epochs = ctx.limit(int(attack.epochs))
    return attack


def poison(
    cfg: DictConfig,
    ctx: RunContext,
    data: RatingData,
    attack: Any,
    targets: list[int],
    shape: tuple[int, int],
    state: dict[str, Any] | None,
) -> Poisoned:
    """Append the attack's fake profiles (a resume reuses the saved ones) to the real training ratings."""
    train = torch.as_tensor(data.train_matrix())
    if state is not None:
        fake = state["fake"]
    else:
        fake = make_profiles(cfg, attack, data, train, targets, *shape)
        ctx.write_artifact("fake_profiles.csv", profiles_csv(fake, data.n_users))
    matrix = torch.cat([train, fake])
    rated = matrix > 0
    users, items = rated.nonzero(as_tuple=True)
    return Poisoned(fake, matrix, rated, Samples(users, items, matrix[users, items] / data.max_rating))


def model_config(cfg: DictConfig) -> DictConfig:
    """`model` with the defence's own training settings: `defense.optimizer` replaces `model.optimizer` and
    `defense.reg` replaces `model.network.reg` (a preset such as tcd_paper trains as the authors' early code)."""
    model = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
    if cfg.defense.get("optimizer") is not None:
        model.optimizer = OmegaConf.to_container(cfg.defense.optimizer, resolve=True)
    if cfg.defense.get("reg") is not None:
        if "reg" not in model.network:
            raise UserError(f"defense.reg: model {cfg.model.name} has no network.reg to set; use model=recsys_mf")
        model.network.reg = float(cfg.defense.reg)
    return model


def run_epochs(cfg: DictConfig) -> int:
    """`defense.epochs` when the defence fixes its own (tcd_paper: 25), else `task.epochs`."""
    epochs = cfg.defense.get("epochs")
    return int(cfg.task.epochs if epochs is None else epochs)


def build_loop(
    cfg: DictConfig, data: RatingData, n_users: int, n_models: int, generator: torch.Generator, state: dict[str, Any] | None
) -> Loop:
    """The defence's models and optimisers, restored from `state` when resuming."""
    model = model_config(cfg)
    optimizer = instantiate(model.optimizer)  # a partial: each LightningModule builds its own
    models = [instantiate(model.network)(n_users=n_users, n_items=data.n_items, optimizer=optimizer) for _ in range(n_models)]
    loop = Loop(models, [m.configure_optimizers() for m in models])
    if state is not None:
        for m, o, ms, os_ in zip(loop.models, loop.optimizers, state["models"], state["optimizers"]):
            m.load_state_dict(ms)
            o.load_state_dict(os_)
        loop.history, loop.start_epoch = state["history"], state["epoch"] + 1
        generator.set_state(state["generator"])
        # the loop's counters, so train/* keys cover every epoch after a resume too (older states: counts only)
        loop.stats = (
            LoopStats(**state["stats"]) if "stats" in state else LoopStats(pseudo_per_model=state.get("pseudo_per_model", []))
        )
    return loop


def train(
    cfg: DictConfig,
    ctx: RunContext,
    data: RatingData,
    targets: list[int],
    poisoned: Poisoned,
    defense: Any,
    loop: Loop,
    epochs: int,
    generator: torch.Generator,
    bootstrap: M.Bootstrap | None = None,
) -> None:
    """Train with the defence; model 0 is evaluated, logged and the loop saved after every epoch (the
    bootstrap only at the last epoch, the one `test/*` reports)."""

    def on_epoch_end(epoch: int, loss: float) -> None:
        last = bootstrap if epoch + 1 == epochs else None
        row = evaluate(loop.models[0], data, poisoned.rated, targets, cfg.task.ks, int(cfg.task.loo_k), last)
        row.update(epoch=epoch + 1, train_loss=loss)
        loop.history.append(row)
        ctx.log_metrics({f"epoch/{k}": v for k, v in row.items()}, step=epoch, series="epoch")
        log.info("epoch %d: %s", epoch + 1, " ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch"))
        ctx.save_state(
            STATE,
            dict(
                fake=poisoned.fake,
                models=[m.state_dict() for m in loop.models],
                epoch=epoch,
                history=loop.history,
                optimizers=[o.state_dict() for o in loop.optimizers],
                generator=generator.get_state(),
                stats=dataclasses.asdict(loop.stats),
            ),
        )

    fit(
        loop.models,
        loop.optimizers,
        poisoned.samples,
        defense,
        epochs,
        int(cfg.task.batch_size),
        poisoned.rated,
        data.max_rating,
        generator,
        start_epoch=loop.start_epoch,
        on_epoch_end=on_epoch_end,
        stats=loop.stats,
        watch=(data.n_users, torch.as_tensor(targets)),
    )
    if not loop.history:
        raise UserError(f"{epochs} epochs: nothing was trained; set task.epochs (or defense.epochs) >= 1")


def final_metrics(history: list[dict[str, float]], stats: LoopStats) -> dict[str, float]:
    """`test/*` at the last epoch, the target HR@50 at the minimum-RMSE epoch, and the loop's `train/*` counters."""
    last = history[-1]
    best = min(history, key=lambda row: row["rmse"])
    metrics = {f"test/{k}": v for k, v in last.items() if k not in ("epoch", "train_loss")}
    metrics["test/epoch"] = last["epoch"]
    metrics["test_best_epoch/target_hr@50"] = best.get("target_hr@50", float("nan"))
    metrics["test_best_epoch/epoch"] = best["epoch"]
    if stats.train_seconds > 0:
        metrics["train/samples_per_s"] = stats.samples / stats.train_seconds
    if stats.pseudo_per_model:
        metrics["train/pseudo_labels_per_model"] = float(np.mean(stats.pseudo_per_model))
    if stats.target_label_share:  # the last epoch's three models
        metrics["train/target_pseudo_label_share"] = float(np.mean(stats.target_label_share[-3:]))
        metrics["train/target_pseudo_label_mean"] = float(np.nanmean(stats.target_label_mean[-3:]))
        metrics["train/nontarget_pseudo_label_mean"] = float(np.nanmean(stats.other_label_mean[-3:]))
    return metrics


def job_record(
    cfg: DictConfig, metrics: dict[str, float], targets: list[int], attack_size: float, attack_name: str, n_fake: int
) -> dict[str, Any]:
    """The job's one record. Factor names differ from the override keys (attack=, defense=) that
    experiments.analysis.aggregate adds itself; epochs stay in metrics.json, since an int field would read as a factor.
    `attack_name` is the condition: a replay's attack (aush, pga, ...), else `attack.name`; `n_fake` (a factor)
    keeps replays of one attack at two sizes apart."""
    return dict(
        attack_name=attack_name,
        defense_name=str(cfg.defense.name),
        model_name=str(cfg.model.name),
        dataset_name=str(cfg.dataset.name),
        attack_size=attack_size,
        n_fake=n_fake,
        seed=int(cfg.seed),
        targets=",".join(map(str, targets)),
        **{k.split("/", 1)[1] if k.startswith("test/") else k: v for k, v in metrics.items() if not k.endswith("/epoch")},
    )


def run(cfg: DictConfig, ctx: RunContext) -> TaskResult:
    if cfg.task.get("threads"):
        torch.set_num_threads(int(cfg.task.threads))
    data: RatingData = instantiate(cfg.dataset)
    targets = read_targets(cfg, data)
    epochs = ctx.limit(run_epochs(cfg))
    attack = build_attack(cfg, ctx)
    defense = instantiate(cfg.defense.method)
    n_fake, n_filler = attack_shape(cfg, ctx, data, targets, attack)
    attack_name = str(getattr(attack, "attack_name", cfg.attack.name))
    bootstrap = instantiate(cfg.task.bootstrap) if cfg.task.get("bootstrap") else None
    generator = torch.Generator().manual_seed(int(cfg.seed))
    state = ctx.load_state(STATE)
    poisoned = poison(cfg, ctx, data, attack, targets, (n_fake, n_filler), state)
    loop = build_loop(cfg, data, poisoned.matrix.shape[0], getattr(defense, "n_models", 1), generator, state)
    train(cfg, ctx, data, targets, poisoned, defense, loop, epochs, generator, bootstrap)
    metrics = final_metrics(loop.history, loop.stats)
    if not n_fake:
        attack_size = 0.0
    else:  # a replay's size is its file's
        attack_size = n_fake / data.n_users if hasattr(attack, "profiles") else float(cfg.attack.size)
    extra = dict(attack_size=attack_size, n_fake=n_fake, n_filler=n_filler, epochs=epochs, attack_name=attack_name)
    record = job_record(cfg, metrics, targets, attack_size, attack_name, n_fake)
    return TaskResult(metrics=metrics, table=results_table(cfg, metrics, extra), records=[record])
