"""The shared MiniLM encoder: both callers (ERC text features, memorability captions) give exactly the
vectors of a reference computed here directly with transformers, batched as each caller batches."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from data import caption_features, text_features
from data.sentence_encoder import EMBED_DIM, cached_array, model_dir

SENTENCES = [
    "I am so happy today!",
    "",
    "What a joyful day.",
    "ok",
    "The invoice is attached; please pay it by Friday or we will call you again.",
    "Ünïcödé: café, naïve, 😀",
    " ".join(["long"] * 300),  # longer than max_length: truncated
    "A dog runs on the beach.",
    "A puppy is running along the shore.",
    "Stock prices fell sharply today.",
    "no",
    "Why?",
]


@pytest.fixture(scope="module")
def folder() -> Path:
    return model_dir(caption_features.writable_dir(None))  # the default cache: extracted once per machine


@pytest.fixture(scope="module")
def hf(folder: Path):
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder)), AutoModel.from_pretrained(str(folder)).eval()


def reference(hf, sentences: Sequence[str], batches: Sequence[Sequence[int]], max_length: int) -> np.ndarray:
    """Sentence-transformers' recipe for this model, batch by batch: masked mean of the last hidden states
    over real tokens, divided by its L2 norm."""
    tokenizer, model = hf
    out = np.full((len(sentences), EMBED_DIM), np.nan, dtype=np.float32)
    with torch.no_grad():
        for index in batches:
            tokens = tokenizer(
                [sentences[i] for i in index], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            hidden = model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out[list(index)] = torch.nn.functional.normalize(mean, dim=-1).numpy()
    return out


def one_by_one(hf, sentences: Sequence[str], max_length: int) -> np.ndarray:
    """Each sentence alone (no padding at all): the plain mean over its tokens, normalised with numpy."""
    tokenizer, model = hf
    rows = []
    with torch.no_grad():
        for sentence in sentences:
            tokens = tokenizer(sentence, truncation=True, max_length=max_length, return_tensors="pt")
            rows.append(model(**tokens).last_hidden_state[0].mean(0).numpy())
    rows = np.stack(rows)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def chunks(order: Sequence[int], size: int) -> list[list[int]]:
    return [list(order[start : start + size]) for start in range(0, len(order), size)]


@pytest.mark.parametrize(("batch_size", "max_length"), [(64, 128), (3, 128), (5, 16)])
def test_text_features_equal_the_reference_batched_by_length(hf, folder: Path, batch_size: int, max_length: int) -> None:
    got = text_features.encode(SENTENCES, folder, batch_size=batch_size, max_length=max_length)
    by_length = np.argsort([len(s) for s in SENTENCES])
    assert got.shape == (len(SENTENCES), EMBED_DIM) and got.dtype == np.float32
    np.testing.assert_array_equal(got, reference(hf, SENTENCES, chunks(by_length, batch_size), max_length))


@pytest.mark.parametrize(("batch_size", "max_length"), [(128, 128), (3, 128), (5, 16)])
def test_caption_features_equal_the_reference_batched_in_order(hf, batch_size: int, max_length: int) -> None:
    encoder = caption_features.CaptionEncoder(batch_size=batch_size, max_length=max_length)
    got = encoder.encode_uncached(SENTENCES)
    assert got.shape == (len(SENTENCES), EMBED_DIM) and got.dtype == np.float32
    np.testing.assert_array_equal(got, reference(hf, SENTENCES, chunks(range(len(SENTENCES)), batch_size), max_length))


@pytest.mark.parametrize("max_length", [128, 16])
def test_both_callers_match_unpadded_mean_pooling(hf, folder: Path, max_length: int) -> None:
    """Padding changes an embedding by ~1e-7 only; wrong pooling (padding counted, [CLS] only) or a missing
    normalisation changes it by far more than the tolerance."""
    expected = one_by_one(hf, SENTENCES, max_length)
    text = text_features.encode(SENTENCES, folder, max_length=max_length)
    captions = caption_features.CaptionEncoder(max_length=max_length).encode_uncached(SENTENCES)
    for got in (text, captions):
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=0, atol=1e-6)


def test_cached_embeddings_are_stored_once_and_equal_the_encoding(tmp_path: Path, monkeypatch, folder: Path) -> None:
    monkeypatch.setattr(text_features, "model_dir", lambda cache: folder)  # no second extraction under tmp_path
    first = text_features.cached_embeddings(SENTENCES[:4], tmp_path, "probe")
    np.testing.assert_array_equal(first, text_features.encode(SENTENCES[:4], folder))
    monkeypatch.setattr(text_features, "encode", lambda *a, **k: pytest.fail("cache was not used"))
    np.testing.assert_array_equal(text_features.cached_embeddings(SENTENCES[:4], tmp_path, "probe"), first)
    assert len(list(tmp_path.glob("probe-*.npy"))) == 1


def test_a_cached_array_of_the_wrong_shape_is_recomputed(tmp_path: Path) -> None:
    file = tmp_path / "x.npy"
    np.save(file, np.zeros((2, 3), np.float32))
    fresh = np.ones((2, EMBED_DIM), np.float32)
    np.testing.assert_array_equal(cached_array(file, 2, lambda: fresh), fresh)
    np.testing.assert_array_equal(np.load(file), fresh)
    np.testing.assert_array_equal(cached_array(file, 2, lambda: pytest.fail("cache was not used")), fresh)


def test_no_sentences_give_an_empty_array() -> None:
    encoder = caption_features.CaptionEncoder()
    encoder._load = lambda: pytest.fail("nothing to encode, yet the model was loaded")
    assert encoder.encode_uncached([]).shape == (0, EMBED_DIM)
