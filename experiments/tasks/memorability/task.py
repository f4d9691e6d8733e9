"""Memorability tasks (Mudgal et al., arXiv 2309.11881): saliency-driven crops scored by a predictor,
and a memorability regressor trained on Memento10k captions.

`run` (experiment=memorability_crop): every clip under `dataset.path` x the crops of `cfg.cropping`
with the saliency backend `cfg.saliency` (a factor: sweep `saliency=...`); each version of a clip is
scored by `cfg.model.predictor` (ResMem: mean over `task.score_frames` frames). Each crop is also
compared with same-size control crops (`task.controls`: centre, seeded random positions) scored on the
same frames, because tercile deltas by original score show regression to the mean with no effect at
all. Per-video scores, boxes, contact sheets and (optionally) cropped videos go to artifacts/.

`run_train_captions` (experiment=memorability_train_captions): ridge on mean caption embeddings
(the baseline) and the Lightning regressor, on the same split by video.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import instantiate
from matplotlib.figure import Figure
from omegaconf import DictConfig

from common.errors import UserError
from data.videos import contact_sheet, list_videos, playback_fps, png_bytes, read_frames, step_fps, write_video
from experiments.analysis.tables import markdown_table
from experiments.core.run_context import RunContext
from experiments.core.task import TaskResult
from models.memorability.controls import (
    ControlSpec,
    anchored_boxes,
    delta_vs_control,
    min_wilcoxon_p,
    summarize_controls,
)
from models.memorability.cropping import apply_crop
from models.memorability.pipeline import CroppedClip, crop_clip, evenly_spaced, summarize_deltas, tercile_masks

log = logging.getLogger(__name__)
CROP_METRICS = ("score_mean", "delta_mean", "delta_low_third_mean", "delta_high_third_mean", "fps")
CONTROL_METRICS = (
    "delta_vs_control_mean",
    "delta_vs_control_ci_low",
    "delta_vs_control_ci_high",
    "delta_vs_control_p",
    "delta_vs_control_low_third_mean",
    "delta_vs_control_high_third_mean",
)
SCORE_COLUMNS = ["clip", "version", "crop", "control", "draw", "score", "delta"]
CONTROL_BOX_COLUMNS = ["clip", "crop", "control", "draw", "frame", "x", "y", "w", "h"]
RELATIVE_COLUMNS = ["clip", "crop", "third", "original", "score", "centre", "random_mean", "control_mean", "delta"]


def _csv(rows: list[dict], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _table(rows: list[dict], columns: list[str]) -> str:
    """Floats to 4 decimals; a column a row lacks is an empty cell."""
    cell = lambda value: f"{value:.4f}" if isinstance(value, float) else str(value)  # noqa: E731
    return markdown_table(columns, [[cell(row.get(c, "")) for c in columns] for row in rows])


def _delta_figure(
    clips: list[str], initial: np.ndarray, deltas: dict[str, np.ndarray], ylabel: str = "crop score - original"
) -> Figure:
    """Per-clip deltas against the original score (where a tercile pattern would show)."""
    figure = Figure(figsize=(5, 3.5))
    axes = figure.subplots()
    for name, values in deltas.items():
        axes.scatter(initial, values, label=name, s=25)
    for x, clip in zip(initial, clips):
        axes.annotate(clip, (x, 0), fontsize=6, rotation=30)
    axes.axhline(0, color="grey", lw=0.5)
    axes.set_xlabel("original score")
    axes.set_ylabel(ylabel)
    axes.legend(fontsize=7)
    return figure


@dataclass
class CropScores:
    """Per-clip scores of the original, of every crop and of each crop's controls (clips x controls, in
    `spec.anchors` order), the rows written to artifacts/, and the timings."""

    clips: list[str]
    croppers: list[str]
    spec: ControlSpec = field(default_factory=lambda: ControlSpec(centre=False, random_draws=0))
    initial: np.ndarray = field(init=False)
    cropped: dict[str, np.ndarray] = field(init=False)
    controls: dict[str, np.ndarray] = field(init=False)
    score_rows: list[dict] = field(default_factory=list)
    box_rows: list[dict] = field(default_factory=list)
    control_box_rows: list[dict] = field(default_factory=list)
    frames_total: int = 0
    decode_seconds: float = 0.0
    saliency_seconds: float = 0.0
    crop_seconds: dict[str, float] = field(init=False)

    @property
    def control_kinds(self) -> list[str]:
        """The kind of each column of `controls` (the same for every clip)."""
        return ["centre"] * int(self.spec.centre) + ["random"] * self.spec.random_draws

    def __post_init__(self) -> None:
        self.initial = np.zeros(len(self.clips))
        self.cropped = {name: np.zeros(len(self.clips)) for name in self.croppers}
        count = int(self.spec.centre) + self.spec.random_draws
        self.controls = {name: np.zeros((len(self.clips), count)) for name in self.croppers}
        self.crop_seconds = dict.fromkeys(self.croppers, 0.0)


def build_croppers(cfg: DictConfig) -> dict[str, Any]:
    croppers = {str(name): instantiate(node) for name, node in cfg.cropping.crops.items()}
    if not croppers:
        raise UserError("cropping.crops is empty: choose a crop set, e.g. cropping=paper")
    return croppers


def check_window(path: Path, croppers: dict[str, Any], kept: int, fps: float) -> None:
    """A moving-average crop needs its whole window (in seconds, so in frames at the kept frames' rate):
    a shorter clip is an error, not a silently weaker smoothing."""
    for name, cropper in croppers.items():
        needed = int(cropper.window_frames(fps))
        if kept < needed:
            raise UserError(
                f"{path}: {kept} frames at {fps:.3g} fps, shorter than the {needed}-frame moving-average window of "
                f"crop {name}; use a longer clip, more task.num_frames or a smaller window_seconds"
            )


def score_controls(
    out: CropScores,
    i: int,
    clip: str,
    frames: list[np.ndarray],
    picks: list[int],
    indices: list[int],
    crop: CroppedClip,
    predictor: Any,
) -> list[np.ndarray]:
    """Score crop `crop.name`'s controls of clip i: on the scored frames only, each control box has the
    saliency box's size in that frame and is resized to the crop's output size, as the crop is.
    Returns the centre control's frames (for the contact sheet; empty without one)."""
    height, width = frames[0].shape[:2]
    size = (crop.frames[0].shape[1], crop.frames[0].shape[0])
    centre_frames: list[np.ndarray] = []
    for column, anchor in enumerate(out.spec.anchors(clip)):
        boxes = anchored_boxes(crop.boxes[picks], width, height, anchor.u, anchor.v)
        cut = [apply_crop(frames[j], box, size) for j, box in zip(picks, boxes)]
        score = predictor.score_video(cut)
        out.controls[crop.name][i, column] = score
        draw = "" if anchor.draw is None else anchor.draw
        values = [clip, f"crop_{crop.name}_{anchor.label}", crop.name, anchor.kind, draw, score, score - out.initial[i]]
        out.score_rows.append(dict(zip(SCORE_COLUMNS, values)))
        out.control_box_rows += [
            dict(zip(CONTROL_BOX_COLUMNS, [clip, crop.name, anchor.kind, draw, indices[j], *b]))
            for j, b in zip(picks, boxes.tolist())
        ]
        if anchor.kind == "centre":
            centre_frames = cut
    return centre_frames


def crop_and_score_clip(
    cfg: DictConfig, ctx: RunContext, i: int, path: Path, saliency: Any, croppers: dict[str, Any], predictor: Any, out: CropScores
) -> None:
    """Read one clip, crop it every way, score the original and each crop on the same frames, and write its
    contact sheet (and cropped videos when `task.write_videos`).

    With `task.num_frames` thinning the clip, the crops' smoothing (set in seconds) runs at the kept
    frames' rate, and cropped videos are written at the rate that keeps the source's duration."""
    task = cfg.task
    start = time.perf_counter()
    frames, indices, info = read_frames(
        path, num_frames=task.num_frames, min_frames=int(task.min_frames), fps=task.get("fps_override")
    )
    out.decode_seconds += time.perf_counter() - start
    kept_fps = step_fps(indices, info.fps)
    check_window(path, croppers, len(frames), kept_fps)
    result = crop_clip(frames, saliency, croppers, fps=kept_fps)
    out.frames_total += len(frames)
    out.saliency_seconds += result.saliency_seconds
    picks = evenly_spaced(len(frames), int(task.score_frames))
    out.initial[i] = predictor.score_video([frames[j] for j in picks])
    out.score_rows.append(dict(zip(SCORE_COLUMNS, [path.stem, "original", "", "", "", out.initial[i], 0.0])))
    sheet_rows = [("original", [frames[j] for j in picks])]
    video_fps = playback_fps(info, len(frames))
    for name, crop in result.crops.items():
        out.crop_seconds[name] += crop.seconds
        out.cropped[name][i] = predictor.score_video([crop.frames[j] for j in picks])
        score = out.cropped[name][i]
        values = [path.stem, f"crop_{name}", name, "saliency", "", score, score - out.initial[i]]
        out.score_rows.append(dict(zip(SCORE_COLUMNS, values)))
        out.box_rows += [
            {"clip": path.stem, "crop": name, "frame": index, "x": b[0], "y": b[1], "w": b[2], "h": b[3]}
            for index, b in zip(indices, crop.boxes.tolist())
        ]
        sheet_rows.append((f"crop_{name}", [crop.frames[j] for j in picks]))
        centre = score_controls(out, i, path.stem, frames, picks, indices, crop, predictor)
        if centre:
            sheet_rows.append((f"crop_{name}_centre", centre))
        if task.write_videos:
            ctx.write_artifact(
                f"videos/{path.stem}_{name}.mp4", lambda tmp, f=crop.frames, fps=video_fps: write_video(tmp, f, fps)
            )
    ctx.write_artifact(f"contact_sheets/{path.stem}.png", png_bytes(contact_sheet(sheet_rows)))
    log.info("%s: original %.3f, %s", path.stem, out.initial[i], ", ".join(f"{n} {out.cropped[n][i]:.3f}" for n in croppers))


def delta_vs_control_rows(out: CropScores) -> list[dict[str, Any]]:
    """Per clip and crop: the original's third, the scores, the controls' mean and delta_vs_control."""
    low, high = tercile_masks(out.initial)
    third = np.where(low, "low", np.where(high, "high", "middle"))
    kinds = np.array(out.control_kinds)
    rows = []
    for name, cropped in out.cropped.items():
        controls = out.controls[name]
        per_clip = delta_vs_control(out.initial, cropped, controls)
        for i, clip in enumerate(out.clips):
            rows.append(
                {
                    "clip": clip,
                    "crop": name,
                    "third": third[i],
                    "original": out.initial[i],
                    "score": cropped[i],
                    "centre": controls[i, kinds == "centre"].mean() if "centre" in kinds else "",
                    "random_mean": controls[i, kinds == "random"].mean() if "random" in kinds else "",
                    "control_mean": controls[i].mean(),
                    "delta": cropped[i] - out.initial[i],
                    "delta_vs_control": per_clip[i],
                }
            )
    return rows


def write_crop_artifacts(ctx: RunContext, out: CropScores) -> None:
    ctx.write_artifact("scores.csv", _csv(out.score_rows, SCORE_COLUMNS))
    ctx.write_artifact("boxes.csv", _csv(out.box_rows, ["clip", "crop", "frame", "x", "y", "w", "h"]))
    deltas = {name: values - out.initial for name, values in out.cropped.items()}
    ctx.save_figure(_delta_figure(out.clips, out.initial, deltas), "delta_vs_initial")
    if out.spec.enabled:
        relative = {name: delta_vs_control(out.initial, values, out.controls[name]) for name, values in out.cropped.items()}
        ctx.save_figure(
            _delta_figure(out.clips, out.initial, relative, "crop score - controls' mean"), "delta_vs_control_vs_initial"
        )
        ctx.write_artifact("control_boxes.csv", _csv(out.control_box_rows, CONTROL_BOX_COLUMNS))
        ctx.write_artifact("delta_vs_control.csv", _csv(delta_vs_control_rows(out), [*RELATIVE_COLUMNS, "delta_vs_control"]))


def crop_metrics(out: CropScores, backend: str) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """`original/score_mean`, `decode/fps`; per crop the score deltas, the saliency + crop frame rate and
    the comparison with its controls (`crop_<c>/delta_vs_control_*`); per crop and control kind the
    control's own deltas (`crop_<c>_centre/...`, `crop_<c>_random/...`: random averaged over draws)."""
    n, spec = len(out.clips), out.spec
    metrics = {"original/score_mean": float(out.initial.mean()), "decode/fps": out.frames_total / max(out.decode_seconds, 1e-9)}
    records = [{"condition": "original", "backend": backend, "clips": n, "score_mean": float(out.initial.mean())}]
    kinds = np.array(out.control_kinds)
    for name, values in out.cropped.items():
        summary = summarize_deltas(out.initial, values)
        summary["fps"] = out.frames_total / max(out.saliency_seconds + out.crop_seconds[name], 1e-9)
        if spec.enabled:
            summary |= summarize_controls(out.initial, values, out.controls[name], spec.resamples, spec.level, spec.seed)
        metrics.update({f"crop_{name}/{k}": v for k, v in summary.items()})
        control = {"control": "saliency"} if spec.enabled else {}
        records.append({"condition": f"crop_{name}", **control, "backend": backend, "clips": n, **summary})
        for kind in dict.fromkeys(kinds):
            own = summarize_deltas(out.initial, out.controls[name][:, kinds == kind].mean(axis=1))
            metrics.update({f"crop_{name}_{kind}/{k}": v for k, v in own.items()})
            records.append({"condition": f"crop_{name}", "control": kind, "backend": backend, "clips": n, **own})
    return metrics, records


def crop_table(cfg: DictConfig, out: CropScores, records: list[dict[str, Any]], backend: str) -> str:
    """results.md: every arm's scores and deltas, then each crop against its controls."""
    n, spec = len(out.clips), out.spec
    text = (
        f"Memorability of {n} clips ({cfg.model.name}, mean of {cfg.task.score_frames} frames per clip), "
        f"saliency {backend}; delta = crop - original; thirds by original score.\n\n"
    )
    if not spec.enabled:
        return text + _table(records, ["condition", "backend", "clips", *CROP_METRICS])
    controls = " + ".join(["centre"] * spec.centre + [f"{spec.random_draws} random"] * bool(spec.random_draws))
    text += (
        f"Controls ({controls}, seed {spec.seed}): boxes of the saliency crop's size per frame, scored on the same "
        "frames; random = mean over draws.\n\n" + _table(records, ["condition", "control", "backend", "clips", *CROP_METRICS])
    )
    rows = [
        {"condition": r["condition"], **{k: r[k] for k in CONTROL_METRICS}} for r in records if r.get("control") == "saliency"
    ]
    return text + (
        f"\n\ndelta_vs_control = crop score - mean of its controls' scores, per clip; mean over clips, "
        f"{spec.level:.0%} percentile bootstrap interval over clips ({spec.resamples} resamples, seed {spec.seed}), "
        f"two-sided Wilcoxon signed-rank p over clips (with {n} clips the smallest attainable p is "
        f"{min_wilcoxon_p(n):.3g}); thirds by original score.\n\n" + _table(rows, ["condition", *CONTROL_METRICS])
    )


def run(cfg: DictConfig, ctx: RunContext) -> TaskResult:
    """Crop every clip with every cropper, score before and after."""
    saliency = instantiate(cfg.saliency.model)
    croppers = build_croppers(cfg)
    spec = ControlSpec.from_config(cfg.task.get("controls"))
    clips = list_videos(cfg.dataset.path)[: ctx.limit(len(list_videos(cfg.dataset.path)))]
    predictor = instantiate(cfg.model.predictor)
    out = CropScores([p.stem for p in clips], list(croppers), spec)
    for i, path in enumerate(clips):
        crop_and_score_clip(cfg, ctx, i, path, saliency, croppers, predictor, out)
    write_crop_artifacts(ctx, out)
    backend = str(cfg.saliency.name)
    metrics, records = crop_metrics(out, backend)
    return TaskResult(metrics=metrics, table=crop_table(cfg, out, records, backend), records=records)


def split_videos(count: int, test_fraction: float, val_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Random split by video: `test_fraction` held out, `val_fraction` of the rest for early stopping."""
    for key, value in (("dataset.test_fraction", test_fraction), ("dataset.val_fraction", val_fraction)):
        if not 0.0 < value < 1.0:
            raise UserError(f"{key}={value} must be in (0, 1)")
    order = np.random.default_rng(seed).permutation(count)
    n_test = max(1, round(count * test_fraction))
    n_val = max(1, round((count - n_test) * val_fraction))
    if count - n_test - n_val < 2:
        raise UserError(f"{count} videos are too few for test_fraction={test_fraction}, val_fraction={val_fraction}")
    return {
        "test": np.sort(order[:n_test]),
        "val": np.sort(order[n_test : n_test + n_val]),
        "train": np.sort(order[n_test + n_val :]),
    }


@dataclass
class CaptionInputs:
    """Scored captions as arrays: token features, the mean embedding, caption-word features, the split."""

    data: Any  # data.memorability_scores.ScoredCaptions
    features: Any
    mask: Any
    means: np.ndarray
    words: np.ndarray
    y: np.ndarray
    split: dict[str, np.ndarray]

    @property
    def inputs(self) -> np.ndarray:
        """The regressor's input: caption mean, then word features."""
        return np.hstack([self.means, self.words])

    @property
    def train_val(self) -> np.ndarray:
        return np.concatenate([self.split["train"], self.split["val"]])


def load_caption_inputs(cfg: DictConfig, ctx: RunContext) -> CaptionInputs:
    """Read the scored captions (debug=fast: a few hundred), encode them, split by video; word features
    are fitted on the training videos only."""
    from data.caption_features import CaptionEncoder, caption_tensor, caption_words, mean_embedding
    from data.memorability_scores import load_scored_captions

    ds = cfg.dataset
    limit = ctx.limit(10**9) if cfg.task.get("limit") is not None else None
    data = load_scored_captions(
        ds.format, ds.scores, ds.captions, ds.target, limit=None if limit is None else max(limit * 50, 100)
    )
    features, mask = caption_tensor(CaptionEncoder(ds.cache_dir, batch_size=ds.encode_batch_size), data.captions)
    split = split_videos(len(data.scores), ds.test_fraction, ds.val_fraction, int(ds.split_seed))
    means, y = mean_embedding(features, mask), data.scores
    words_cfg = cfg.model.get("word_features")
    words = caption_words(data.captions, split["train"], **words_cfg) if words_cfg else np.zeros((len(y), 0), np.float32)
    return CaptionInputs(data, features, mask, means, words, y, split)


def fit_ridges(cfg: DictConfig, c: CaptionInputs) -> tuple[Any, Any]:
    """The baseline ridge on mean embeddings, and a ridge on the regressor's own inputs (the same one when
    there are no word features), both fitted on train + val."""
    ridge = instantiate(cfg.model.ridge).fit(c.means[c.train_val], c.y[c.train_val])
    ridge_inputs = instantiate(cfg.model.ridge).fit(c.inputs[c.train_val], c.y[c.train_val]) if c.words.shape[1] else ridge
    return ridge, ridge_inputs


def fit_regressor(cfg: DictConfig, ctx: RunContext, c: CaptionInputs) -> Any:
    """The Lightning regressor, optionally started from a ridge on the training videos only (val / test unseen)."""
    from data.caption_features import CaptionDataModule
    from experiments.core.training import build_trainer
    from models.memorability.predictors import LitPredictor

    inputs, train_y = c.inputs, c.y[c.split["train"]]
    module = instantiate(
        cfg.model.regressor,
        in_features=inputs.shape[-1],
        target_mean=float(train_y.mean()),
        target_std=float(train_y.std() or 1.0),
    )
    if cfg.model.get("init_from_ridge"):
        start = instantiate(cfg.model.ridge).fit(inputs[c.split["train"]], c.y[c.split["train"]])
        module.init_linear(start.model.coef_, start.model.intercept_)
    datamodule = CaptionDataModule(
        {k: (c.features[v], c.mask[v], c.y[v], c.words[v]) for k, v in c.split.items()},
        batch_size=cfg.dataset.batch_size,
        subsample=bool(cfg.model.caption_subsample),
        seed=cfg.seed,
    )
    trainer, ckpt_path = build_trainer(cfg, ctx, "regressor")
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return LitPredictor(module)


def run_train_captions(cfg: DictConfig, ctx: RunContext) -> TaskResult:
    """Ridge baseline on mean caption embeddings; Lightning regressor on [mean embedding, caption words]
    (and, for comparison, a ridge on the regressor's own inputs); Spearman on held-out videos."""
    from models.memorability.predictors import spearman

    ds = cfg.dataset
    c = load_caption_inputs(cfg, ctx)
    test, val = c.split["test"], c.split["val"]
    ridge, ridge_inputs = fit_ridges(cfg, c)
    ridge_predictions = ridge.predict(c.means[test])
    ridge_test = spearman(ridge_predictions, c.y[test])
    ridge_inputs_test = spearman(ridge_inputs.predict(c.inputs[test]), c.y[test])
    predictor = fit_regressor(cfg, ctx, c)
    val_rho = spearman(predictor.predict(c.inputs[val]), c.y[val])
    regressor_predictions = predictor.predict(c.inputs[test])
    test_rho = spearman(regressor_predictions, c.y[test])

    ctx.write_artifact(
        "test_predictions.csv",
        _csv(
            [
                {"video_id": c.data.video_ids[j], "score": c.y[j], "ridge": r, "regressor": p}
                for j, r, p in zip(test, ridge_predictions, regressor_predictions)
            ],
            ["video_id", "score", "ridge", "regressor"],
        ),
    )
    metrics = {
        "regressor/test_spearman": test_rho,
        "ridge/test_spearman": ridge_test,
        "regressor/val_spearman": val_rho,
        "ridge_inputs/test_spearman": ridge_inputs_test,
        "ridge/alpha": float(ridge.alpha),
        "ridge/cv_spearman": float(ridge.cv_spearman),
        "data/train_videos": len(c.split["train"]),
        "data/val_videos": len(val),
        "data/test_videos": len(test),
        "data/word_features": c.words.shape[1],
        "data/regressor_inputs": predictor.module.hparams.in_features,
    }
    records = [
        {"condition": "ridge", "seed": cfg.seed, "test_spearman": ridge_test},
        {"condition": "ridge_inputs", "seed": cfg.seed, "test_spearman": ridge_inputs_test},
        {"condition": "regressor", "seed": cfg.seed, "test_spearman": test_rho, "val_spearman": val_rho},
    ]
    table = (
        f"{ds.name}: {len(c.data.scores)} videos ({len(c.split['train'])} train / {len(val)} val / "
        f"{len(test)} test, split by video, seed {ds.split_seed}) -> {ds.target} score; Spearman on "
        f"held-out videos. Ridge: mean MiniLM caption embedding; regressor and ridge_inputs: that mean plus "
        f"{c.words.shape[1]} caption-word TF-IDF features.\n\n"
        + _table(
            [
                {"model": f"ridge (alpha {ridge.alpha:g})", "test_spearman": ridge_test, "val_spearman": float("nan")},
                {
                    "model": f"ridge_inputs (alpha {ridge_inputs.alpha:g})",
                    "test_spearman": ridge_inputs_test,
                    "val_spearman": float("nan"),
                },
                {"model": "regressor", "test_spearman": test_rho, "val_spearman": val_rho},
            ],
            ["model", "test_spearman", "val_spearman"],
        )
    )
    return TaskResult(metrics=metrics, table=table, records=records)
