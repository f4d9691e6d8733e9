"""Memorability tasks (Mudgal et al., arXiv 2309.11881): saliency-driven crops scored by a predictor,
and a memorability regressor trained on Memento10k captions.

`run` (experiment=memorability_crop): every clip under `dataset.path` x the crops of `cfg.cropping`
with the saliency backend `cfg.saliency` (a factor: sweep `saliency=...`); each version of a clip is
scored by `cfg.model.predictor` (ResMem: mean over `task.score_frames` frames). Per-video scores,
boxes, contact sheets and (optionally) cropped videos go to artifacts/.

`run_train_captions` (experiment=memorability_train_captions): ridge on mean caption embeddings
(the baseline) and the Lightning regressor, on the same split by video.
"""

from __future__ import annotations

import csv
import io
import logging
import time

import numpy as np
from hydra.utils import instantiate
from matplotlib.figure import Figure
from omegaconf import DictConfig

from common.errors import UserError
from data.videos import contact_sheet, list_videos, png_bytes, read_frames, write_video
from experiments.core.run_context import RunContext
from experiments.core.task import TaskResult
from models.memorability.pipeline import crop_clip, evenly_spaced, summarize_deltas

log = logging.getLogger(__name__)
CROP_METRICS = ("score_mean", "delta_mean", "delta_low_third_mean", "delta_high_third_mean", "fps")


def _csv(rows: list[dict], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _table(rows: list[dict], columns: list[str]) -> str:
    def cell(value) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _delta_figure(clips: list[str], initial: np.ndarray, scores: dict[str, np.ndarray]) -> Figure:
    figure = Figure(figsize=(5, 3.5))
    axes = figure.subplots()
    for name, values in scores.items():
        axes.scatter(initial, values - initial, label=name, s=25)
    for x, clip in zip(initial, clips):
        axes.annotate(clip, (x, 0), fontsize=6, rotation=30)
    axes.axhline(0, color="grey", lw=0.5)
    axes.set_xlabel("original score")
    axes.set_ylabel("crop score - original")
    axes.legend(fontsize=7)
    return figure


def run(cfg: DictConfig, ctx: RunContext) -> TaskResult:
    """Crop every clip with every cropper, score before and after."""
    task = cfg.task
    saliency = instantiate(cfg.saliency.model)
    croppers = {str(name): instantiate(node) for name, node in cfg.cropping.crops.items()}
    if not croppers:
        raise UserError("cropping.crops is empty: choose a crop set, e.g. cropping=paper")
    min_frames = max(
        [int(getattr(c, "window", 1)) if getattr(c, "smoothing", "") == "moving_average" else 1 for c in croppers.values()]
        + [int(task.min_frames)]
    )
    clips = list_videos(cfg.dataset.path)[: ctx.limit(len(list_videos(cfg.dataset.path)))]
    predictor = instantiate(cfg.model.predictor)

    score_rows, box_rows = [], []
    initial = np.zeros(len(clips))
    cropped_scores = {name: np.zeros(len(clips)) for name in croppers}
    frames_total, decode_seconds, saliency_seconds = 0, 0.0, 0.0
    crop_seconds = dict.fromkeys(croppers, 0.0)
    for i, path in enumerate(clips):
        start = time.perf_counter()
        frames, indices, info = read_frames(path, num_frames=task.num_frames, min_frames=min_frames)
        decode_seconds += time.perf_counter() - start
        result = crop_clip(frames, saliency, croppers)
        frames_total += len(frames)
        saliency_seconds += result.saliency_seconds
        picks = evenly_spaced(len(frames), int(task.score_frames))
        initial[i] = predictor.score_video([frames[j] for j in picks])
        score_rows.append({"clip": path.stem, "version": "original", "score": initial[i], "delta": 0.0})
        sheet_rows = [("original", [frames[j] for j in picks])]
        for name, crop in result.crops.items():
            crop_seconds[name] += crop.seconds
            cropped_scores[name][i] = predictor.score_video([crop.frames[j] for j in picks])
            score_rows.append(
                {
                    "clip": path.stem,
                    "version": f"crop_{name}",
                    "score": cropped_scores[name][i],
                    "delta": cropped_scores[name][i] - initial[i],
                }
            )
            box_rows += [
                {"clip": path.stem, "crop": name, "frame": index, "x": b[0], "y": b[1], "w": b[2], "h": b[3]}
                for index, b in zip(indices, crop.boxes.tolist())
            ]
            sheet_rows.append((f"crop_{name}", [crop.frames[j] for j in picks]))
            if task.write_videos:
                ctx.write_artifact(
                    f"videos/{path.stem}_{name}.mp4", lambda tmp, f=crop.frames, fps=info.fps: write_video(tmp, f, fps)
                )
        ctx.write_artifact(f"contact_sheets/{path.stem}.png", png_bytes(contact_sheet(sheet_rows)))
        log.info("%s: original %.3f, %s", path.stem, initial[i], ", ".join(f"{n} {cropped_scores[n][i]:.3f}" for n in croppers))

    ctx.write_artifact("scores.csv", _csv(score_rows, ["clip", "version", "score", "delta"]))
    ctx.write_artifact("boxes.csv", _csv(box_rows, ["clip", "crop", "frame", "x", "y", "w", "h"]))
    ctx.save_figure(_delta_figure([p.stem for p in clips], initial, cropped_scores), "delta_vs_initial")

    backend = str(cfg.saliency.name)
    metrics = {"original/score_mean": float(initial.mean()), "decode/fps": frames_total / max(decode_seconds, 1e-9)}
    records = [{"condition": "original", "backend": backend, "clips": len(clips), "score_mean": float(initial.mean())}]
    for name, values in cropped_scores.items():
        summary = summarize_deltas(initial, values)
        summary["fps"] = frames_total / max(saliency_seconds + crop_seconds[name], 1e-9)
        metrics.update({f"crop_{name}/{k}": v for k, v in summary.items()})
        records.append({"condition": f"crop_{name}", "backend": backend, "clips": len(clips), **summary})
    table = (
        f"Memorability of {len(clips)} clips ({cfg.model.name}, mean of {task.score_frames} frames per clip), "
        f"saliency {backend}; delta = crop - original; thirds by original score.\n\n"
        + _table(records, ["condition", "backend", "clips", *CROP_METRICS])
    )
    return TaskResult(metrics=metrics, table=table, records=records)


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


def run_train_captions(cfg: DictConfig, ctx: RunContext) -> TaskResult:
    """Ridge baseline on mean caption embeddings; Lightning regressor on [mean embedding, caption words]
    (and, for comparison, a ridge on the regressor's own inputs); Spearman on held-out videos."""
    from data.caption_features import CaptionDataModule, CaptionEncoder, caption_tensor, caption_words, mean_embedding
    from data.memorability_scores import load_scored_captions
    from experiments.core.training import build_trainer
    from models.memorability.predictors import LitPredictor, spearman

    ds = cfg.dataset
    limit = ctx.limit(10**9) if cfg.task.get("limit") is not None else None
    data = load_scored_captions(
        ds.format, ds.scores, ds.captions, ds.target, limit=None if limit is None else max(limit * 50, 100)
    )
    features, mask = caption_tensor(CaptionEncoder(ds.cache_dir, batch_size=ds.encode_batch_size), data.captions)
    split = split_videos(len(data.scores), ds.test_fraction, ds.val_fraction, int(ds.split_seed))
    means, y = mean_embedding(features, mask), data.scores
    train_val = np.concatenate([split["train"], split["val"]])

    ridge = instantiate(cfg.model.ridge).fit(means[train_val], y[train_val])
    ridge_predictions = ridge.predict(means[split["test"]])
    ridge_test = spearman(ridge_predictions, y[split["test"]])

    words_cfg = cfg.model.get("word_features")
    words = caption_words(data.captions, split["train"], **words_cfg) if words_cfg else np.zeros((len(y), 0), np.float32)
    inputs = np.hstack([means, words])  # the regressor's input: caption mean, then word features
    ridge_inputs = instantiate(cfg.model.ridge).fit(inputs[train_val], y[train_val]) if words.shape[1] else ridge
    ridge_inputs_test = spearman(ridge_inputs.predict(inputs[split["test"]]), y[split["test"]])

    train_y = y[split["train"]]
    module = instantiate(
        cfg.model.regressor,
        in_features=inputs.shape[-1],
        target_mean=float(train_y.mean()),
        target_std=float(train_y.std() or 1.0),
    )
    if cfg.model.get("init_from_ridge"):  # a ridge on the training videos only: val / test stay unseen
        start = instantiate(cfg.model.ridge).fit(inputs[split["train"]], y[split["train"]])
        module.init_linear(start.model.coef_, start.model.intercept_)
    datamodule = CaptionDataModule(
        {k: (features[v], mask[v], y[v], words[v]) for k, v in split.items()},
        batch_size=ds.batch_size,
        subsample=bool(cfg.model.caption_subsample),
        seed=cfg.seed,
    )
    trainer, ckpt_path = build_trainer(cfg, ctx, "regressor")
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    predictor = LitPredictor(module)
    val_rho = spearman(predictor.predict(inputs[split["val"]]), y[split["val"]])
    regressor_predictions = predictor.predict(inputs[split["test"]])
    test_rho = spearman(regressor_predictions, y[split["test"]])

    ctx.write_artifact(
        "test_predictions.csv",
        _csv(
            [
                {"video_id": data.video_ids[j], "score": y[j], "ridge": r, "regressor": p}
                for j, r, p in zip(split["test"], ridge_predictions, regressor_predictions)
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
        "data/train_videos": len(split["train"]),
        "data/val_videos": len(split["val"]),
        "data/test_videos": len(split["test"]),
        "data/word_features": words.shape[1],
        "data/regressor_inputs": module.hparams.in_features,
    }
    records = [
        {"condition": "ridge", "seed": cfg.seed, "test_spearman": ridge_test},
        {"condition": "ridge_inputs", "seed": cfg.seed, "test_spearman": ridge_inputs_test},
        {"condition": "regressor", "seed": cfg.seed, "test_spearman": test_rho, "val_spearman": val_rho},
    ]
    table = (
        f"{ds.name}: {len(data.scores)} videos ({len(split['train'])} train / {len(split['val'])} val / "
        f"{len(split['test'])} test, split by video, seed {ds.split_seed}) -> {ds.target} score; Spearman on "
        f"held-out videos. Ridge: mean MiniLM caption embedding; regressor and ridge_inputs: that mean plus "
        f"{words.shape[1]} caption-word TF-IDF features.\n\n"
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
