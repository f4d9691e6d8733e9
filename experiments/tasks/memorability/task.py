"""Memorability tasks (Mudgal et al., arXiv 2309.11881): saliency-driven crops scored by a predictor,
and a memorability regressor trained on Memento10k captions.

`run` (experiment=memorability_crop): every video under `dataset.path` (a file, or a folder: the video
files in it, or every file matching the glob `dataset.glob`, e.g. `**/*.mp4`) x the crops of
`cfg.cropping` with the saliency backend `cfg.saliency` (a factor: sweep `saliency=...`); each version of
a clip is scored by `cfg.model.predictor` (ResMem: mean over `task.score_frames` frames). Each crop is
also compared with same-size control crops (`task.controls`: centre, seeded random positions) scored on
the same frames, because tercile deltas by original score show regression to the mean with no effect at
all. A folder is a batch: videos are streamed (video.py), each appended to artifacts/scores.csv as it
is done, so a killed batch rerun in its run dir resumes where it stopped (ledger.py); a video that
cannot be processed is recorded in artifacts/failures.csv and the batch goes on. The statistics over
clips are computed from scores.csv at the end. Per-video boxes, contact sheets, views and (optionally)
cropped videos go to artifacts/.

`run_train_captions` (experiment=memorability_train_captions): ridge on mean caption embeddings
(the baseline) and the Lightning regressor, on the same split by video.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from hydra.utils import instantiate
from matplotlib.figure import Figure
from omegaconf import DictConfig
from tqdm import tqdm

from common.errors import UserError
from data.videos import list_videos
from experiments.analysis.tables import markdown_table
from experiments.core.run_context import RunContext
from experiments.core.run_dir import ResumeFrom
from experiments.core.task import TaskResult
from experiments.tasks.memorability.ledger import Ledger, one_line
from experiments.tasks.memorability.video import VideoJob, process_video, score_columns, timing_columns
from models.memorability.controls import ControlSpec, delta_vs_control, min_wilcoxon_p, summarize_controls
from models.memorability.pipeline import summarize_deltas, tercile_masks

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
RELATIVE_COLUMNS = ["clip", "crop", "third", "original", "score", "centre", "random_mean", "control_mean", "delta"]
FAILED_VIDEOS = 3  # exit status of a batch that completed with videos in failures.csv


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
    `spec.anchors` order), read back from the per-video logs, and the summed timings."""

    clips: list[str]
    croppers: list[str]
    spec: ControlSpec = field(default_factory=lambda: ControlSpec(centre=False, random_draws=0))
    initial: np.ndarray = field(init=False)
    cropped: dict[str, np.ndarray] = field(init=False)
    controls: dict[str, np.ndarray] = field(init=False)
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

    @classmethod
    def from_logs(
        cls, scores: list[dict[str, str]], timings: list[dict[str, str]], croppers: list[str], spec: ControlSpec
    ) -> CropScores:
        """From scores.csv rows (one per video) and timings.csv rows."""
        out = cls([row["clip"] for row in scores], croppers, spec)
        labels = [anchor.label for anchor in spec.anchors("")]
        out.initial = np.array([float(row["original"]) for row in scores])
        for name in croppers:
            out.cropped[name] = np.array([float(row[f"crop_{name}"]) for row in scores])
            values = [[float(row[f"crop_{name}_{label}"]) for label in labels] for row in scores]
            out.controls[name] = np.array(values, float).reshape(len(scores), len(labels))
        out.frames_total = sum(int(row["frames"]) for row in timings)
        out.decode_seconds = sum(float(row["decode_s"]) for row in timings) / 2  # each video is decoded twice
        out.saliency_seconds = sum(float(row["saliency_s"]) for row in timings)
        out.crop_seconds = {name: sum(float(row[f"crop_{name}_s"]) for row in timings) for name in croppers}
        return out


def build_croppers(cfg: DictConfig) -> dict[str, Any]:
    croppers = {str(name): instantiate(node) for name, node in cfg.cropping.crops.items()}
    if not croppers:
        raise UserError("cropping.crops is empty: choose a crop set, e.g. cropping=paper")
    return croppers


@dataclass
class Batch:
    """The videos of one run: `dataset.path` itself, or the files of that folder (by `dataset.glob`).
    Each is named by its path relative to the folder (the key of its rows), and has a clip id: that path
    without its suffix, unless two files share it (a.mp4 and a.avi keep their suffixes)."""

    root: Path
    sources: list[Path]
    is_folder: bool
    pattern: str | None = None
    clips: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        stems = {path: str(PurePosixPath(path).with_suffix("")) for path in map(self.path, self.sources)}
        shared = Counter(stems.values())
        self.clips = {path: stem if shared[stem] == 1 else path for path, stem in stems.items()}

    @classmethod
    def from_config(cls, cfg: DictConfig, ctx: RunContext) -> Batch:
        root = Path(str(cfg.dataset.path)).expanduser()
        pattern = cfg.dataset.get("glob")
        sources = list_videos(root, pattern)
        return cls(root, sources[: ctx.limit(len(sources))], root.is_dir(), pattern)

    def path(self, source: Path) -> str:
        return (source.relative_to(self.root) if self.is_folder else Path(source.name)).as_posix()

    def clip(self, source: Path) -> str:
        return self.clips[self.path(source)]

    def describe(self) -> str:
        where = f"under {self.root}" + (f" matching {self.pattern!r}" if self.pattern else "")
        return f"{len(self.sources)} file{'s' * (len(self.sources) != 1)} {where}" if self.is_folder else str(self.root)


def process_batch(job: VideoJob, ctx: RunContext, batch: Batch, ledger: Ledger, skip: set[str]) -> None:
    """Every video not in `skip`, in order, under a progress bar (on a terminal; the log has a line per
    video); each one's rows are appended once it is done. In a folder, a video that fails is recorded with
    its error and the batch goes on; a single file's error stops the run."""
    todo = [source for source in batch.sources if batch.path(source) not in skip]
    bar = tqdm(total=len(batch.sources), initial=len(batch.sources) - len(todo), unit="video", disable=None)
    try:
        for number, source in enumerate(todo, start=len(batch.sources) - len(todo) + 1):
            path, clip = batch.path(source), batch.clip(source)
            bar.set_postfix_str(path[-40:], refresh=False)
            try:
                outcome = process_video(job, ctx, source, path, clip)
            except Exception as exc:
                if not batch.is_folder:
                    raise
                ledger.fail(path, clip, exc)
                log.warning("[%d/%d] %s failed, recorded in failures.csv: %s", number, len(batch.sources), path, one_line(exc))
            else:
                ledger.boxes.append(outcome.box_rows)
                ledger.control_boxes.append(outcome.control_box_rows)
                ledger.timings.append([outcome.timing_row()])
                ledger.exports.append(outcome.export_rows)
                ledger.scores.append([outcome.score_row()])  # last: the row says the video is done
                crops = ", ".join(f"{name} {score:.3f}" for name, score in outcome.cropped.items())
                log.info("[%d/%d] %s: original %.3f, %s", number, len(batch.sources), path, outcome.initial, crops)
            bar.update(1)
    finally:
        bar.close()


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
    """What needs every clip: the delta plots and delta_vs_control.csv (per-video files are written as they come)."""
    deltas = {name: values - out.initial for name, values in out.cropped.items()}
    ctx.save_figure(_delta_figure(out.clips, out.initial, deltas), "delta_vs_initial")
    if out.spec.enabled:
        relative = {name: delta_vs_control(out.initial, values, out.controls[name]) for name, values in out.cropped.items()}
        ctx.save_figure(
            _delta_figure(out.clips, out.initial, relative, "crop score - controls' mean"), "delta_vs_control_vs_initial"
        )
        ctx.write_artifact("delta_vs_control.csv", _csv(delta_vs_control_rows(out), [*RELATIVE_COLUMNS, "delta_vs_control"]))


def export_fields(exports: list[dict[str, str]]) -> dict[str, str]:
    """Record fields saying how the cropped videos were written: `video_codec` (fourcc) and `audio` (kept,
    none, dropped), each value once, joined when videos differ; none without exported videos."""
    if not exports:
        return {}
    audio = sorted({row["audio"].split(":")[0] for row in exports})
    return {"video_codec": ",".join(sorted({row["codec"] for row in exports})), "audio": ",".join(audio)}


def crop_metrics(
    out: CropScores, backend: str, batch: dict[str, float] | None = None, fields: dict[str, str] | None = None
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """`original/score_mean`, `decode/fps` (kept frames per second of one decoding pass); per crop the score
    deltas, the saliency + crop frame rate and the comparison with its controls (`crop_<c>/delta_vs_control_*`);
    per crop and control kind the control's own deltas (`crop_<c>_centre/...`, `crop_<c>_random/...`:
    random averaged over draws); the batch's counts (`batch/videos`, `_scored`, `_failed`). Records carry
    `fields` (how videos were exported)."""
    n, spec, fields = len(out.clips), out.spec, fields or {}
    metrics = {"original/score_mean": float(out.initial.mean()), "decode/fps": out.frames_total / max(out.decode_seconds, 1e-9)}
    metrics |= batch or {}
    records = [{"condition": "original", "backend": backend, "clips": n, **fields, "score_mean": float(out.initial.mean())}]
    kinds = np.array(out.control_kinds)
    for name, values in out.cropped.items():
        summary = summarize_deltas(out.initial, values)
        summary["fps"] = out.frames_total / max(out.saliency_seconds + out.crop_seconds[name], 1e-9)
        if spec.enabled:
            summary |= summarize_controls(out.initial, values, out.controls[name], spec.resamples, spec.level, spec.seed)
        metrics.update({f"crop_{name}/{k}": v for k, v in summary.items()})
        control = {"control": "saliency"} if spec.enabled else {}
        records.append({"condition": f"crop_{name}", **control, "backend": backend, "clips": n, **fields, **summary})
        for kind in dict.fromkeys(kinds):
            own = summarize_deltas(out.initial, out.controls[name][:, kinds == kind].mean(axis=1))
            metrics.update({f"crop_{name}_{kind}/{k}": v for k, v in own.items()})
            records.append({"condition": f"crop_{name}", "control": kind, "backend": backend, "clips": n, **fields, **own})
    return metrics, records


def crop_table(cfg: DictConfig, out: CropScores, records: list[dict[str, Any]], backend: str, preface: str = "") -> str:
    """results.md: the batch, every arm's scores and deltas, then each crop against its controls."""
    n, spec = len(out.clips), out.spec
    text = preface + (
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


def batch_preface(batch: Batch, scored: int, failures: list[dict[str, str]], fields: dict[str, str]) -> str:
    """The lines of results.md that say what was read and how videos were written."""
    text = f"Videos: {batch.describe()}; {scored} scored"
    text += f", {len(failures)} failed (artifacts/failures.csv).\n\n" if failures else ".\n\n"
    if fields:
        text += f"Cropped videos: codec {fields['video_codec']}, audio {fields['audio']} (artifacts/exports.csv).\n\n"
    return text


def run(cfg: DictConfig, ctx: RunContext) -> TaskResult:
    """Crop every video with every cropper, score before and after; resumes a batch in its run dir."""
    saliency = instantiate(cfg.saliency.model)
    croppers = build_croppers(cfg)
    spec = ControlSpec.from_config(cfg.task.get("controls"))
    job = VideoJob.from_config(cfg, saliency, croppers, None, spec)
    batch = Batch.from_config(cfg, ctx)
    job.choose_codec()
    job.predictor = instantiate(cfg.model.predictor)
    ledger = Ledger.in_folder(ctx.artifact_path(""), score_columns(list(croppers), spec), timing_columns(list(croppers)))
    scored, failed = ledger.resume(fresh=ResumeFrom.parse(cfg.get("ckpt_path")).kind == "never")
    if scored or failed:
        log.info("resuming: %d videos already scored (skipped), %d failed before (tried again)", len(scored), failed)
    process_batch(job, ctx, batch, ledger, scored)

    rows, failures = ledger.scores.rows(), ledger.failures.rows()
    if not rows:
        first = failures[0] if failures else {"path": str(batch.root), "error": "nothing was processed"}
        raise UserError(
            f"none of the {batch.describe()} could be processed (each is in artifacts/failures.csv); "
            f"the first, {first['path']}: {first['error']}"
        )
    if failures:
        log.warning("%d of %d videos failed: see artifacts/failures.csv", len(failures), len(failures) + len(rows))
    out = CropScores.from_logs(rows, ledger.timings.rows(), list(croppers), spec)
    write_crop_artifacts(ctx, out)
    backend = str(cfg.saliency.name)
    fields = export_fields(ledger.exports.rows())
    counts = {"batch/videos": float(len(batch.sources)), "batch/videos_scored": float(len(rows))}
    metrics, records = crop_metrics(out, backend, counts | {"batch/videos_failed": float(len(failures))}, fields)
    preface = batch_preface(batch, len(rows), failures, fields)
    table = crop_table(cfg, out, records, backend, preface)
    return TaskResult(metrics=metrics, table=table, records=records, exit_status=FAILED_VIDEOS if failures else 0)


def split_videos(count: int, test_fraction: float, val_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Random split by video: `test_fraction` held out (0: none, when an official test set is given),
    `val_fraction` of the rest for early stopping."""
    if not 0.0 <= test_fraction < 1.0:
        raise UserError(f"dataset.test_fraction={test_fraction} must be in [0, 1) (0 only with dataset.official_test)")
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"dataset.val_fraction={val_fraction} must be in (0, 1)")
    order = np.random.default_rng(seed).permutation(count)
    n_test = max(1, round(count * test_fraction)) if test_fraction > 0 else 0
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
    """Scored captions as arrays: token features, the mean embedding, caption-word features, the split.
    Rows are the training file's videos, then the official test files' (`official`: their row indices,
    empty without `dataset.official_test`)."""

    data: Any  # data.memorability_scores.ScoredCaptions of the training file
    features: Any
    mask: Any
    means: np.ndarray
    words: np.ndarray
    y: np.ndarray
    split: dict[str, np.ndarray]
    official_data: Any = None  # ScoredCaptions of dataset.official_test
    official: np.ndarray = field(default_factory=lambda: np.zeros(0, int))

    @property
    def inputs(self) -> np.ndarray:
        """The regressor's input: caption mean, then word features."""
        return np.hstack([self.means, self.words])

    @property
    def train_val(self) -> np.ndarray:
        return np.concatenate([self.split["train"], self.split["val"]])

    @property
    def video_ids(self) -> list[str]:
        return list(self.data.video_ids) + (list(self.official_data.video_ids) if self.official_data else [])

    def evaluation_sets(self) -> dict[str, np.ndarray]:
        """Where every model is scored: `test` (the random hold-out) and `official_test`, when not empty."""
        sets = {"test": self.split["test"], "official_test": self.official}
        return {name: rows for name, rows in sets.items() if len(rows)}


def load_official_test(cfg: DictConfig, train: Any, limit: int | None) -> Any:
    """`dataset.official_test` ({format, scores, captions, target}): another split's files in the official
    layout (e.g. Memento10k's dev files), or None. Sharing videos with the training file is refused."""
    from data.memorability_scores import load_scored_captions

    node = cfg.dataset.get("official_test")
    if node is None:
        return None
    missing = [key for key in ("format", "scores", "captions") if node.get(key) is None]
    if missing:
        raise UserError(
            f"dataset.official_test lacks {', '.join(missing)}: give "
            "dataset.official_test={format: memento10k, scores: <dev scores csv>, captions: <dev captions csv>}"
        )
    target = node.get("target") or cfg.dataset.target
    data = load_scored_captions(node.format, node.scores, node.captions, target, limit=limit)
    if node.format == cfg.dataset.format and set(data.video_ids) & set(train.video_ids):
        shared = sorted(set(data.video_ids) & set(train.video_ids))
        raise UserError(
            f"dataset.official_test shares {len(shared)} videos with the training file (e.g. {shared[0]}): "
            "point it at another split's files"
        )
    return data


def load_caption_inputs(cfg: DictConfig, ctx: RunContext) -> CaptionInputs:
    """Read the scored captions (debug=fast: a few hundred) and the official test files if any, encode
    them, split the training file by video; word features are fitted on the training videos only."""
    from data.caption_features import CaptionEncoder, caption_tensor, caption_words, mean_embedding
    from data.memorability_scores import load_scored_captions

    ds = cfg.dataset
    limit = ctx.limit(10**9) if cfg.task.get("limit") is not None else None
    limit = None if limit is None else max(limit * 50, 100)
    data = load_scored_captions(ds.format, ds.scores, ds.captions, ds.target, limit=limit)
    official_data = load_official_test(cfg, data, limit)
    if float(ds.test_fraction) == 0 and official_data is None:
        raise UserError("dataset.test_fraction=0 leaves nothing to test on: give dataset.official_test or a fraction in (0, 1)")
    captions = list(data.captions) + (list(official_data.captions) if official_data else [])
    features, mask = caption_tensor(CaptionEncoder(ds.cache_dir, batch_size=ds.encode_batch_size), captions)
    split = split_videos(len(data.scores), ds.test_fraction, ds.val_fraction, int(ds.split_seed))
    y = np.concatenate([data.scores, official_data.scores if official_data else np.zeros(0)])
    official = np.arange(len(data.scores), len(y))
    means = mean_embedding(features, mask)
    words_cfg = cfg.model.get("word_features")
    words = caption_words(captions, split["train"], **words_cfg) if words_cfg else np.zeros((len(y), 0), np.float32)
    return CaptionInputs(data, features, mask, means, words, y, split, official_data, official)


def fit_ridges(cfg: DictConfig, c: CaptionInputs) -> tuple[Any, Any]:
    """The baseline ridge on mean embeddings, and a ridge on the regressor's own inputs (the same one when
    there are no word features), both fitted on train + val."""
    ridge = instantiate(cfg.model.ridge).fit(c.means[c.train_val], c.y[c.train_val])
    ridge_inputs = instantiate(cfg.model.ridge).fit(c.inputs[c.train_val], c.y[c.train_val]) if c.words.shape[1] else ridge
    return ridge, ridge_inputs


PREDICTOR_INPUTS = ("means", "inputs")


def check_predictors(cfg: DictConfig) -> None:
    """Before any encoding: each of `model.predictors` names its input and an estimator."""
    for name, node in (cfg.model.get("predictors") or {}).items():
        if node.get("input") not in PREDICTOR_INPUTS:
            raise UserError(f"model.predictors.{name}.input={node.get('input')!r} must be one of {', '.join(PREDICTOR_INPUTS)}")
        if node.get("estimator") is None or "_target_" not in node.estimator:
            raise UserError(f"model.predictors.{name}.estimator needs a _target_, e.g. sklearn.linear_model.BayesianRidge")


def fit_predictors(cfg: DictConfig, c: CaptionInputs) -> dict[str, Any]:
    """`model.predictors`: name -> {input, estimator}, any estimator with sklearn's fit / predict (the
    paper's BayesianRidge), fitted on train + val; name -> a function of row indices to predictions."""
    fitted = {}
    for name, node in (cfg.model.get("predictors") or {}).items():
        features = c.means if node.input == "means" else c.inputs
        estimator = instantiate(node.estimator).fit(features[c.train_val], c.y[c.train_val])
        fitted[str(name)] = lambda rows, e=estimator, x=features: np.asarray(e.predict(x[rows]), float)
    return fitted


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
        {k: (c.features[v], c.mask[v], c.y[v], c.words[v]) for k, v in c.split.items() if len(v)},
        batch_size=cfg.dataset.batch_size,
        subsample=bool(cfg.model.caption_subsample),
        seed=cfg.seed,
    )
    trainer, ckpt_path = build_trainer(cfg, ctx, "regressor")
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return LitPredictor(module)


def write_predictions(ctx: RunContext, c: CaptionInputs, name: str, rows: np.ndarray, predictions: dict[str, np.ndarray]) -> None:
    """artifacts/<set>_predictions.csv: video_id, the ground-truth score, each model's prediction (the
    file the scoring mode reads: experiment=memorability_score_predictions)."""
    ids = c.video_ids
    table = [
        {"video_id": ids[j], "score": c.y[j], **{model: values[i] for model, values in predictions.items()}}
        for i, j in enumerate(rows)
    ]
    ctx.write_artifact(f"{name}_predictions.csv", _csv(table, ["video_id", "score", *predictions]))


def run_train_captions(cfg: DictConfig, ctx: RunContext) -> TaskResult:
    """Ridge baseline on mean caption embeddings; Lightning regressor on [mean embedding, caption words];
    a ridge on the regressor's own inputs and `model.predictors` (BayesianRidge) for comparison; Spearman
    on held-out videos (`test`) and on another split given by path (`official_test`)."""
    from models.memorability.predictors import spearman

    check_predictors(cfg)
    c = load_caption_inputs(cfg, ctx)
    val = c.split["val"]
    ridge, ridge_inputs = fit_ridges(cfg, c)
    predictor = fit_regressor(cfg, ctx, c)
    models = {
        "ridge": lambda rows: ridge.predict(c.means[rows]),
        "ridge_inputs": lambda rows: ridge_inputs.predict(c.inputs[rows]),
        "regressor": lambda rows: predictor.predict(c.inputs[rows]),
        **fit_predictors(cfg, c),
    }
    val_rho = spearman(predictor.predict(c.inputs[val]), c.y[val])
    metrics: dict[str, float] = {"regressor/val_spearman": val_rho}
    rhos: dict[str, dict[str, float]] = {name: {} for name in models}
    for set_name, rows in c.evaluation_sets().items():
        predictions = {name: np.asarray(predict(rows), float) for name, predict in models.items()}
        for name, values in predictions.items():
            rhos[name][set_name] = metrics[f"{name}/{set_name}_spearman"] = spearman(values, c.y[rows])
        write_predictions(ctx, c, set_name, rows, predictions)
    metrics |= {
        "ridge/alpha": float(ridge.alpha),
        "ridge/cv_spearman": float(ridge.cv_spearman),
        "data/train_videos": len(c.split["train"]),
        "data/val_videos": len(val),
        "data/test_videos": len(c.split["test"]),
        "data/word_features": c.words.shape[1],
        "data/regressor_inputs": predictor.module.hparams.in_features,
    }
    if len(c.official):
        metrics["data/official_test_videos"] = len(c.official)
    records = [
        {
            "condition": name,
            "seed": cfg.seed,
            **{f"{s}_spearman": rho for s, rho in rhos[name].items()},
            **({"val_spearman": val_rho} if name == "regressor" else {}),
        }
        for name in models
    ]
    return TaskResult(metrics=metrics, table=caption_table(cfg, c, ridge, ridge_inputs, rhos, val_rho), records=records)


def caption_table(
    cfg: DictConfig, c: CaptionInputs, ridge: Any, ridge_inputs: Any, rhos: dict[str, dict[str, float]], val_rho: float
) -> str:
    """results.md: the data, then each model's Spearman on each evaluation set."""
    ds = cfg.dataset
    test, official = len(c.split["test"]), len(c.official)
    text = (
        f"{ds.name}: {len(c.data.scores)} videos ({len(c.split['train'])} train / {len(c.split['val'])} val / "
        f"{test} test, split by video, seed {ds.split_seed}) -> {ds.target} score. Ridge: mean MiniLM caption "
        f"embedding; regressor and ridge_inputs: that mean plus {c.words.shape[1]} caption-word TF-IDF features."
    )
    if official:
        node = ds.official_test
        text += (
            f" official_test: {official} videos of {node.scores} ({node.format}, "
            f"{node.get('target') or ds.target} score), models fitted on train + val of the file above."
        )
    labels = {"ridge": f"ridge (alpha {ridge.alpha:g})", "ridge_inputs": f"ridge_inputs (alpha {ridge_inputs.alpha:g})"}
    sets = list(c.evaluation_sets())
    rows = [
        {
            "model": labels.get(name, name),
            **{f"{s}_spearman": by_set[s] for s in sets},
            "val_spearman": val_rho if name == "regressor" else float("nan"),
        }
        for name, by_set in rhos.items()
    ]
    return text + "\n\n" + _table(rows, ["model", *(f"{s}_spearman" for s in sets), "val_spearman"])
