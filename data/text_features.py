"""Frozen sentence embeddings of utterances (all-MiniLM-L6-v2, `data.sentence_encoder`), cached on disk.

Utterances are batched in order of length (64 per batch), which fixes the exact embeddings (see
`data.sentence_encoder` on why the batching matters).

Cache: `<cache_dir>/<name>-<hash>.npy`, the hash covering the model id, max_length and every sentence
in order, so a changed transcript never reads a stale cache. `resolve_cache_dir` takes the configured
dir when it is writable (normally `<data root>/cache/erc_text`) and falls back to
`~/.cache/fivefold/erc_text` when the data root is read-only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.files import writable_dir
from data.sentence_encoder import EMBED_DIM, MODEL_ID, SentenceEncoder, cached_array, model_dir

__all__ = [
    "EMBED_DIM",
    "FALLBACK_CACHE",
    "MODEL_ID",
    "cached_embeddings",
    "encode",
    "model_dir",
    "resolve_cache_dir",
    "sentences_hash",
]

FALLBACK_CACHE = Path("~/.cache/fivefold/erc_text")


def resolve_cache_dir(cache_dir: str | Path | None) -> Path:
    """The configured cache dir when writable, else ~/.cache/fivefold/erc_text (data roots may be read-only)."""
    return writable_dir(cache_dir, FALLBACK_CACHE, "dataset.cache_dir")


def sentences_hash(sentences: Sequence[str], max_length: int) -> str:
    digest = hashlib.sha256(f"{MODEL_ID}|{max_length}".encode())
    for sentence in sentences:
        digest.update(sentence.encode("utf-8", "surrogatepass") + b"\x00")
    return digest.hexdigest()[:16]


def encode(sentences: Sequence[str], path: Path, batch_size: int = 64, max_length: int = 128) -> np.ndarray:
    """(N, 384) float32 L2-normalised mean-pooled embeddings with the model folder `path`; sentences are
    batched by length for speed."""
    path = Path(path)
    encoder = SentenceEncoder(path.parent, batch_size, max_length, by_length=True, folder=path)
    return encoder.encode_uncached(sentences)


def cached_embeddings(
    sentences: Sequence[str], cache_dir: str | Path | None, name: str, batch_size: int = 64, max_length: int = 128
) -> np.ndarray:
    """Embeddings of `sentences`, computed once and stored as `<cache>/<name>-<hash>.npy`."""
    cache = resolve_cache_dir(cache_dir)
    file = cache / f"{name}-{sentences_hash(sentences, max_length)}.npy"
    return cached_array(file, len(sentences), lambda: encode(list(sentences), model_dir(cache), batch_size, max_length))
