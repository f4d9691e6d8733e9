"""Conversation corpora for emotion recognition (IEMOCAP, MELD): readers for the published pickles,
and a DataModule yielding padded dialogues with masks and speaker ids.

Formats (all `pickle.load(f, encoding="latin1")`, dicts keyed by dialogue id):
- COSMIC metadata (`iemocap.pkl`, `meld.pkl` of declare-lab/conv-emotion): a list whose positions
  are named by `fields` in the dataset config (IEMOCAP: speakers, labels, sentences, train, test,
  valid; MELD: speakers one-hot, emotion, sentiment, sentences, train, test, valid). Transcripts only,
  so text features are computed by `data.text_features`; any corpus in that layout runs from a
  dataset file alone (label names, speaker count and field positions come from config).
- MMGCN / DialogueGCN (`IEMOCAP_features.pkl` 9-tuple; `MELD_features_raw1.pkl` 10-tuple).
- SDT / GraphSmile (`iemocap_multimodal_features.pkl` 12-tuple, MELD 13-tuple; 4 RoBERTa variants,
  the first used as text).
The feature pickles have no validation split; as in MMGCN/SDT-style code a fixed fraction of the
training dialogues (`valid_fraction`, fixed seed, never the test ones) is held out for model choice.
"""

from __future__ import annotations

import pickle
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from common.errors import UserError
from common.files import require_file
from data.resumable import ResumableGenerators

SPLITS = ("train", "valid", "test")
HOW_TO_GET = {
    "cosmic": "the COSMIC metadata pickles are in declare-lab/conv-emotion (COSMIC/feature-extraction)",
    "mmgcn": "IEMOCAP_features.pkl / MELD_features_raw1.pkl come with the MMGCN and DialogueGCN repositories",
    "sdt": "iemocap_multimodal_features.pkl / meld_multimodal_features.pkl: see butterfliesss/SDT data/readme.txt",
}
# Tuple layouts of the feature pickles: field names by position ("_" = unused).
FEATURE_LAYOUTS: dict[str, tuple[str, ...]] = {
    "mmgcn_iemocap": ("ids", "speakers", "labels", "text", "audio", "visual", "sentences", "train", "test"),
    "mmgcn_meld": ("ids", "speakers", "labels", "text", "audio", "visual", "sentences", "train", "test", "_"),
    "sdt_iemocap": ("ids", "speakers", "labels", "text", "_", "_", "_", "audio", "visual", "sentences", "train", "test"),
    "sdt_meld": ("ids", "speakers", "labels", "text", "_", "_", "_", "audio", "visual", "sentences", "train", "test", "_"),
}


@dataclass
class Dialogue:
    """One conversation: per-utterance speaker ids, labels, feature matrices per modality, transcripts."""

    id: str
    speakers: np.ndarray  # (T,) int64
    labels: np.ndarray  # (T,) int64
    features: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> (T, D) float32
    sentences: list[str] | None = None
    utterance_ids: list[str] | None = None  # the corpus's own ids; `<dialogue>_<t>` where it has none

    def utterance_id(self, t: int) -> str:
        return self.utterance_ids[t] if self.utterance_ids else f"{self.id}_{t}"


@dataclass
class Corpus:
    splits: dict[str, list[Dialogue]]
    label_names: list[str]
    num_speakers: int

    @property
    def modality_dims(self) -> dict[str, int]:
        first = self.splits["train"][0]
        return {name: int(array.shape[1]) for name, array in first.features.items()}


def load_pickle(path: str | Path, fmt: str) -> Any:
    path = require_file(path, HOW_TO_GET.get(fmt, "see the dataset config"))
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle, encoding="latin1")
    except Exception as exc:
        raise UserError(f"{path}: not a readable pickle ({exc.__class__.__name__}: {exc})") from None


def fix_text(sentence: str, encoding: str | None) -> str:
    """MELD's transcripts are Windows-1252 bytes read as latin1 (`\\x92` for an apostrophe): re-decode."""
    if not encoding:
        return sentence
    try:
        return sentence.encode("latin1").decode(encoding)
    except (UnicodeEncodeError, UnicodeDecodeError):
        return sentence


def speaker_ids(raw: Sequence[Any], speaker_names: Sequence[str] | None, num_speakers: int, where: str) -> np.ndarray:
    """Speakers as ints: letters via `speaker_names` (IEMOCAP 'M'/'F'), one-hot rows via argmax (MELD), or ints."""
    out = []
    for value in raw:
        if isinstance(value, str):
            if not speaker_names or value not in speaker_names:
                raise UserError(f"{where}: speaker {value!r} not in dataset.speaker_names={list(speaker_names or [])}")
            out.append(list(speaker_names).index(value))
        elif np.ndim(value) == 1:
            out.append(int(np.argmax(value)))
        else:
            out.append(int(value))
    ids = np.asarray(out, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= num_speakers):
        raise UserError(f"{where}: speaker id {int(ids.max())} out of range for dataset.num_speakers={num_speakers}")
    return ids


def check_dialogue(dialogue: Dialogue, num_classes: int, dims: Mapping[str, int] | None, where: str) -> None:
    """Bad input fails here, naming the dialogue: empty dialogues, labels out of range, ragged or mismatched features."""
    n = len(dialogue.labels)
    if n == 0:
        raise UserError(f"{where}: dialogue {dialogue.id!r} has no utterances; remove it from the splits")
    if dialogue.labels.min() < 0 or dialogue.labels.max() >= num_classes:
        raise UserError(
            f"{where}: dialogue {dialogue.id!r} has label {int(dialogue.labels.max())} outside 0..{num_classes - 1} "
            f"(dataset.label_names has {num_classes} names)"
        )
    if len(dialogue.speakers) != n:
        raise UserError(f"{where}: dialogue {dialogue.id!r} has {len(dialogue.speakers)} speakers for {n} labels")
    for name, array in dialogue.features.items():
        if array.ndim != 2 or array.shape[0] != n:
            raise UserError(f"{where}: dialogue {dialogue.id!r} {name} features have shape {array.shape}, expected ({n}, D)")
        if dims is not None and array.shape[1] != dims[name]:
            raise UserError(
                f"{where}: dialogue {dialogue.id!r} {name} features are {array.shape[1]}-d, expected {dims[name]}-d "
                "like the other dialogues"
            )


def finish_corpus(splits: dict[str, list[Dialogue]], label_names: Sequence[str], num_speakers: int, where: str) -> Corpus:
    dims = None
    for split in SPLITS:
        if not splits.get(split):
            raise UserError(f"{where}: the {split} split is empty")
        for dialogue in splits[split]:
            check_dialogue(dialogue, len(label_names), dims, where)
            dims = dims or {k: v.shape[1] for k, v in dialogue.features.items()}
    return Corpus(splits, list(label_names), num_speakers)


def read_cosmic(
    path: str | Path,
    fields: Mapping[str, int],
    label_names: Sequence[str],
    num_speakers: int,
    speaker_names: Sequence[str] | None = None,
    text_encoding: str | None = None,
) -> Corpus:
    """COSMIC metadata pickle (transcripts only; features are added later by the text encoder)."""
    data = load_pickle(path, "cosmic")
    needed = ("speakers", "labels", "sentences", "train", "valid", "test")
    missing = [name for name in needed if name not in fields]
    if missing:
        raise UserError(f"dataset.fields: missing positions for {missing} (the COSMIC layout needs {list(needed)})")
    if not isinstance(data, (list, tuple)) or len(data) <= max(int(fields[k]) for k in needed):
        size = len(data) if isinstance(data, (list, tuple)) else type(data).__name__
        raise UserError(f"{path}: expected a COSMIC metadata list with fields at {dict(fields)}, got {size} entries")
    speakers, labels, sentences = (data[int(fields[k])] for k in ("speakers", "labels", "sentences"))
    if not all(isinstance(x, Mapping) for x in (speakers, labels, sentences)):
        raise UserError(f"{path}: fields speakers/labels/sentences at {dict(fields)} must be dicts keyed by dialogue id")
    splits = {}
    for split in SPLITS:
        dialogues = []
        for key in data[int(fields[split])]:
            if key not in labels:
                raise UserError(f"{path}: {split} dialogue {key!r} has no labels")
            text = [fix_text(s, text_encoding) for s in sentences[key]]
            if len(text) != len(labels[key]):
                raise UserError(f"{path}: dialogue {key!r} has {len(text)} sentences for {len(labels[key])} labels")
            dialogues.append(
                Dialogue(
                    str(key),
                    speaker_ids(speakers[key], speaker_names, num_speakers, f"{path} {key}"),
                    np.asarray(labels[key], dtype=np.int64),
                    {},
                    text,
                )
            )
        splits[split] = dialogues
    return finish_corpus(splits, label_names, num_speakers, str(path))


def split_train_valid(keys: Sequence[Any], valid_fraction: float, seed: int = 0) -> tuple[list[Any], list[Any]]:
    """A fixed held-out part of the training dialogues (the feature pickles ship train/test only)."""
    keys = list(keys)
    order = list(range(len(keys)))
    random.Random(seed).shuffle(order)
    n_valid = max(1, int(round(valid_fraction * len(keys))))
    valid = {order[i] for i in range(n_valid)}
    return [k for i, k in enumerate(keys) if i not in valid], [k for i, k in enumerate(keys) if i in valid]


def read_feature_pickle(
    path: str | Path,
    layout: str,
    label_names: Sequence[str],
    num_speakers: int,
    modalities: Sequence[str] = ("text", "audio", "visual"),
    speaker_names: Sequence[str] | None = None,
    valid_fraction: float = 0.1,
) -> Corpus:
    """MMGCN/DialogueGCN or SDT feature pickle (`layout` in FEATURE_LAYOUTS) -> Corpus with the chosen modalities."""
    if layout not in FEATURE_LAYOUTS:
        raise UserError(f"dataset.layout={layout!r}: expected one of {sorted(FEATURE_LAYOUTS)}")
    names = FEATURE_LAYOUTS[layout]
    data = load_pickle(path, layout.split("_")[0])
    if not isinstance(data, (list, tuple)) or len(data) != len(names):
        size = len(data) if isinstance(data, (list, tuple)) else type(data).__name__
        raise UserError(
            f"{path}: layout {layout} expects a {len(names)}-tuple ({', '.join(names)}), got {size} entries; "
            f"check dataset.layout (one of {sorted(FEATURE_LAYOUTS)})"
        )
    fields = {name: data[i] for i, name in enumerate(names) if name != "_"}
    unknown = [m for m in modalities if m not in ("text", "audio", "visual")]
    if unknown:
        raise UserError(f"dataset.modalities: unknown {unknown}; choose from text, audio, visual")
    train_keys, valid_keys = split_train_valid(fields["train"], valid_fraction)
    splits = {}
    for split, keys in (("train", train_keys), ("valid", valid_keys), ("test", list(fields["test"]))):
        dialogues = []
        for key in keys:
            feats = {m: np.asarray(fields[m][key], dtype=np.float32) for m in modalities}
            dialogues.append(
                Dialogue(
                    str(key),
                    speaker_ids(fields["speakers"][key], speaker_names, num_speakers, f"{path} {key}"),
                    np.asarray(fields["labels"][key], dtype=np.int64),
                    feats,
                    list(fields["sentences"][key]) if key in fields["sentences"] else None,
                )
            )
        splits[split] = dialogues
    return finish_corpus(splits, label_names, num_speakers, str(path))


# ------------------------------------------------------------------------------------------ corpora from config
def cosmic_text_corpus(
    path: str | Path,
    fields: Mapping[str, int],
    label_names: Sequence[str],
    num_speakers: int,
    speaker_names: Sequence[str] | None = None,
    text_encoding: str | None = None,
    cache_dir: str | None = None,
    cache_name: str = "corpus",
    batch_size: int = 64,
) -> Corpus:
    """COSMIC transcripts + frozen all-MiniLM-L6-v2 sentence embeddings as the `text` modality (cached)."""
    from data.text_features import cached_embeddings

    corpus = read_cosmic(path, fields, label_names, num_speakers, speaker_names, text_encoding)
    dialogues = [d for split in SPLITS for d in corpus.splits[split]]
    embeddings = cached_embeddings([s for d in dialogues for s in d.sentences], cache_dir, cache_name, batch_size)
    start = 0
    for dialogue in dialogues:
        dialogue.features["text"] = embeddings[start : start + len(dialogue.labels)]
        start += len(dialogue.labels)
    return corpus


def degrade_features(features: np.ndarray, noise_std: float, drop_prob: float, rng: np.random.Generator) -> np.ndarray:
    """Lower a modality's quality: extra Gaussian noise of `noise_std`, then each utterance's vector zeroed with
    probability `drop_prob`."""
    out = (features + rng.normal(0, noise_std, features.shape).astype(np.float32)).astype(np.float32)
    out[rng.random(len(out)) < drop_prob] = 0.0
    return out


def degrade_corpus(
    corpus: Corpus,
    modality: str,
    noise_std: float = 0.0,
    drop_prob: float = 0.0,
    splits: Sequence[str] = ("test",),
    seed: int = 0,
    key: str = "dataset.degrade",
) -> None:
    """Degrade one modality of a real corpus in `splits` (default: test only, so a model trained on clean data
    meets a worse modality at test time). Its own random stream: every other feature, label and split is the
    same at every level, so runs that differ only in the degradation are paired."""
    if modality not in corpus.modality_dims:
        raise UserError(f"{key}.modality={modality!r} is not one of the modalities {list(corpus.modality_dims)}")
    if not set(splits) <= set(SPLITS):
        raise UserError(f"{key}.splits={list(splits)} must name splits among {list(SPLITS)}")
    if noise_std < 0 or not 0 <= drop_prob <= 1:
        raise UserError(f"{key}: noise_std={noise_std} must be >= 0 and drop_prob={drop_prob} in [0, 1]")
    rng = np.random.default_rng([seed, 2])
    for split in SPLITS:
        if split in splits:
            for dialogue in corpus.splits[split]:
                dialogue.features[modality] = degrade_features(dialogue.features[modality], noise_std, drop_prob, rng)


def synthetic_corpus(
    num_dialogues: Sequence[int] = (120, 20, 40),
    length: tuple[int, int] = (10, 30),
    dims: Mapping[str, int] | None = None,
    signal: Mapping[str, float] | None = None,
    num_classes: int = 4,
    num_speakers: int = 2,
    noise: float = 1.0,
    stay: float = 0.7,
    degrade: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> Corpus:
    """Multimodal dialogues with a planted signal, for tests and the modality-quality experiment.

    Labels follow a Markov chain along the dialogue (probability `stay` of keeping the previous one), so
    context helps. Modality m's feature = signal[m] * prototype_m[label] + N(0, noise^2). `degrade`
    ({modality, noise_std, drop_prob}) lowers one modality's quality in every split: extra Gaussian
    noise and utterances whose feature vector is zeroed with probability drop_prob, in the splits listed
    in `degrade.splits` (default all; `[test]` = a model trained on clean data meets a worse modality at
    test time). Degradation draws from its own random stream, so every clean feature, label and speaker
    is the same at every degradation level: runs that differ only in `degrade` are paired.
    """
    dims = dict(dims or {"text": 32, "audio": 16, "visual": 16})
    signal = dict(signal or {m: 1.0 for m in dims})
    degrade = dict(degrade or {})
    degraded_splits = set(degrade.get("splits") or SPLITS)
    if not degraded_splits <= set(SPLITS):
        raise UserError(f"dataset.corpus.degrade.splits={sorted(degraded_splits)} must name splits among {list(SPLITS)}")
    if degrade.get("modality") and degrade["modality"] not in dims:
        raise UserError(f"dataset.corpus.degrade.modality={degrade['modality']!r} is not one of the modalities {list(dims)}")
    rng = np.random.default_rng(seed)
    degrade_rng = np.random.default_rng([seed, 1])
    prototypes = {m: rng.normal(0, 1, (num_classes, d)) for m, d in dims.items()}
    splits = {}
    for split, count in zip(SPLITS, num_dialogues):
        dialogues = []
        for i in range(count):
            n = int(rng.integers(length[0], length[1] + 1))
            labels = np.empty(n, dtype=np.int64)
            labels[0] = rng.integers(num_classes)
            for t in range(1, n):
                labels[t] = labels[t - 1] if rng.random() < stay else rng.integers(num_classes)
            feats = {
                m: (signal[m] * prototypes[m][labels] + rng.normal(0, noise, (n, d))).astype(np.float32) for m, d in dims.items()
            }
            if degrade.get("modality") and split in degraded_splits:
                m = degrade["modality"]
                noise_std, drop_prob = float(degrade.get("noise_std", 0.0)), float(degrade.get("drop_prob", 0.0))
                feats[m] = degrade_features(feats[m], noise_std, drop_prob, degrade_rng)
            dialogues.append(Dialogue(f"{split}_{i}", rng.integers(num_speakers, size=n).astype(np.int64), labels, feats))
        splits[split] = dialogues
    return finish_corpus(splits, [f"c{k}" for k in range(num_classes)], num_speakers, "synthetic")


# ------------------------------------------------------------------------------------------ training statistics
def training_label_shares(corpus: Corpus) -> np.ndarray:
    """Each class's share of the training utterances."""
    labels = np.concatenate([d.labels for d in corpus.splits["train"]])
    return np.bincount(labels, minlength=len(corpus.label_names)) / len(labels)


def resolve_class_weights(spec: Sequence[float] | str | None, corpus: Corpus, key: str) -> list[float] | None:
    """Cross-entropy class weights: `inverse_frequency` = 1 / (the class's share of the training utterances),
    as MMGCN and SDT weight IEMOCAP (the rarest class weighs most); a list is taken as the weights themselves."""
    names = corpus.label_names
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec != "inverse_frequency":
            raise UserError(f"{key}={spec!r}: use inverse_frequency, a list of {len(names)} weights, or null")
        shares = training_label_shares(corpus)
        absent = [names[c] for c in np.flatnonzero(shares == 0)]
        if absent:
            raise UserError(f"{key}=inverse_frequency: class {absent} has no training utterance; give the weights as a list")
        return [float(w) for w in 1.0 / shares]
    weights = [float(w) for w in spec]
    if len(weights) != len(names):
        raise UserError(f"{key} has {len(weights)} entries for {len(names)} classes")
    if any(not w > 0 for w in weights):
        raise UserError(f"{key}={weights}: every weight must be > 0")
    return weights


def standardize_features(corpus: Corpus) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Scale every modality to zero mean and unit variance with the training utterances' statistics, in every
    split, so raw feature scales (openSMILE's run to the hundreds) do not dominate the reconstruction losses.
    A constant feature keeps scale 1. Returns {modality: (mean, std)}."""
    stats = {}
    for modality in corpus.modality_dims:
        train = np.concatenate([d.features[modality] for d in corpus.splits["train"]]).astype(np.float64)
        mean, std = train.mean(axis=0), train.std(axis=0)
        std[std == 0] = 1.0
        stats[modality] = (mean.astype(np.float32), std.astype(np.float32))
        for split in SPLITS:
            for d in corpus.splits[split]:
                d.features[modality] = ((d.features[modality] - stats[modality][0]) / stats[modality][1]).astype(np.float32)
    return stats


# ------------------------------------------------------------------------------------------ batches
def collate_dialogues(dialogues: Sequence[Dialogue]) -> dict[str, Any]:
    """Pad to the longest dialogue: features {m: (B, T, D)}, mask (B, T) True = real, speakers, labels (-1 = pad)."""
    lengths = [len(d.labels) for d in dialogues]
    batch, longest = len(dialogues), max(lengths)
    mask = torch.zeros(batch, longest, dtype=torch.bool)
    speakers = torch.zeros(batch, longest, dtype=torch.long)
    labels = torch.full((batch, longest), -1, dtype=torch.long)
    features = {m: torch.zeros(batch, longest, a.shape[1]) for m, a in dialogues[0].features.items()}
    for i, (d, n) in enumerate(zip(dialogues, lengths)):
        mask[i, :n] = True
        speakers[i, :n] = torch.from_numpy(d.speakers)
        labels[i, :n] = torch.from_numpy(d.labels)
        for m in features:
            features[m][i, :n] = torch.from_numpy(d.features[m])
    return {"features": features, "mask": mask, "speakers": speakers, "labels": labels, "ids": [d.id for d in dialogues]}


class ConversationDataModule(ResumableGenerators, L.LightningDataModule):
    """Dialogues of a `Corpus` (built once from the `corpus` config node) in padded batches.

    `val_dataloader` returns [validation, test]: the module scores both every epoch so the task can
    read test figures at the epoch chosen on validation. `seed` only changes the training order.
    """

    config_key: str = "dataset"  # the config node this module was built from: errors name its keys

    def __init__(
        self,
        corpus: Corpus | Callable[[], Corpus],
        batch_size: int = 16,
        eval_batch_size: int = 64,
        class_weights: Sequence[float] | str | None = None,
        standardize: bool = False,
        degrade: Mapping[str, Any] | None = None,
        name: str = "erc",
        seed: int = 0,
        limit: int | None = None,
        config_key: str = "dataset",
    ) -> None:
        super().__init__()
        self.config_key = config_key
        self.corpus = corpus if isinstance(corpus, Corpus) else corpus()
        self.batch_size, self.eval_batch_size, self.seed, self.limit = batch_size, eval_batch_size, seed, limit
        self.class_weights = resolve_class_weights(class_weights, self.corpus, f"{config_key}.class_weights")
        self.feature_stats = standardize_features(self.corpus) if standardize else None
        if degrade and degrade.get("modality"):  # after scaling: noise_std is in training standard deviations
            degrade_corpus(self.corpus, key=f"{config_key}.degrade", **{k: v for k, v in degrade.items() if v is not None})

    @property
    def network_kwargs(self) -> dict[str, Any]:
        return {
            "dims": self.corpus.modality_dims,
            "num_classes": len(self.corpus.label_names),
            "num_speakers": self.corpus.num_speakers,
        }

    def split(self, name: str) -> list[Dialogue]:
        dialogues = self.corpus.splits[name]
        return dialogues[: self.limit] if self.limit else dialogues

    def train_dataloader(self) -> DataLoader:
        generator = self.resumable_generator("train_order", self.seed)
        return DataLoader(
            self.split("train"), batch_size=self.batch_size, shuffle=True, generator=generator, collate_fn=collate_dialogues
        )

    def val_dataloader(self) -> list[DataLoader]:
        return [
            DataLoader(self.split(s), batch_size=self.eval_batch_size, collate_fn=collate_dialogues) for s in ("valid", "test")
        ]
