"""MiniLM caption features: unit-norm, meaningful neighbours, cached, and the split data the regressor sees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data.caption_features import (
    FALLBACK_CACHE,
    CaptionEncoder,
    CaptionSets,
    caption_tensor,
    caption_words,
    mean_embedding,
    writable_dir,
)


@pytest.fixture(scope="module")
def encoder() -> CaptionEncoder:
    return CaptionEncoder()  # the default cache: the model folder is extracted once per machine


def test_embeddings_are_unit_norm_and_paraphrases_are_nearest(encoder: CaptionEncoder) -> None:
    texts = ["A dog runs on the beach.", "A puppy is running along the shore.", "Stock prices fell sharply today."]
    features = encoder.encode_uncached(texts)
    assert features.shape == (3, 384) and features.dtype == np.float32
    assert np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    similarity = features @ features.T
    assert similarity[0, 1] > 0.6 > similarity[0, 2] + 0.3


def test_cache_returns_the_same_array_without_the_model(tmp_path: Path, encoder: CaptionEncoder) -> None:
    cached = CaptionEncoder(tmp_path)
    cached._model, cached._tokenizer = encoder._model, encoder._tokenizer
    first = cached.encode(["a cat", "a hat"])
    cached._model = cached._tokenizer = None
    cached._load = lambda: (_ for _ in ()).throw(AssertionError("model loaded despite the cache"))
    assert np.array_equal(cached.encode(["a cat", "a hat"]), first)
    assert len(list(tmp_path.glob("minilm_*.npy"))) == 1


def test_unwritable_cache_dir_falls_back(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a dir")
    assert writable_dir(blocked / "cache") == FALLBACK_CACHE


def test_padding_mean_and_caption_subsets() -> None:
    class Fake:
        def encode(self, texts):
            return np.array([[float(len(t)), 1.0] for t in texts], np.float32)

    features, mask = caption_tensor(Fake(), [["ab", "abcd"], ["abc"]])
    assert features.shape == (2, 2, 2) and mask.tolist() == [[True, True], [True, False]]
    assert np.allclose(mean_embedding(features, mask), [[3.0, 1.0], [3.0, 1.0]])
    train = CaptionSets(features, mask, np.array([0.5, 0.7]), subsample=True, seed=0)
    seen = {float(train[0][0][0]) for _ in range(40)}
    assert seen <= {2.0, 3.0, 4.0} and len(seen) > 1  # means of non-empty subsets only
    assert float(CaptionSets(features, mask, np.array([0.5, 0.7]), subsample=False)[0][0][0]) == 3.0


def test_caption_words_are_fitted_on_the_training_videos_only() -> None:
    captions = [["a man sings on stage", "a man singing"], ["a dog runs", "a dog running fast"], ["zebra zebra"]]
    words = caption_words(captions, fit_on=np.array([0, 1]), min_df=1, weight=0.5)
    assert words.shape[0] == 3 and words.dtype == np.float32
    assert np.allclose(np.linalg.norm(words[:2], axis=1), 0.5)  # L2-normalised, then weighted
    assert not words[2].any()  # a word only held-out videos use has no column: nothing leaks from them
    assert words[0] @ words[1] == 0.0  # no shared word


def test_video_features_follow_the_caption_mean_unsubsampled() -> None:
    features = np.array([[[2.0], [4.0]]], np.float32)
    mask = np.array([[True, True]])
    words = np.array([[7.0, 8.0]], np.float32)
    sets = CaptionSets(features, mask, np.array([0.5]), subsample=True, seed=0, video_features=words)
    items = [sets[0][0].tolist() for _ in range(30)]
    assert all(item[1:] == [7.0, 8.0] for item in items)  # the word block is appended as is
    assert {item[0] for item in items} == {2.0, 3.0, 4.0}  # only the caption mean is subsampled
