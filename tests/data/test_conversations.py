"""Conversation readers (COSMIC metadata, MMGCN and SDT feature pickles), batches, text-feature cache."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import UserError
from data import text_features
from data.conversations import (
    FEATURE_LAYOUTS,
    ConversationDataModule,
    collate_dialogues,
    read_cosmic,
    read_feature_pickle,
    synthetic_corpus,
)

IEMOCAP = ["hap", "sad", "neu", "ang", "exc", "fru"]
MELD = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]
IEMOCAP_FIELDS = dict(speakers=0, labels=1, sentences=2, train=3, test=4, valid=5)
MELD_FIELDS = dict(speakers=0, labels=1, sentences=3, train=4, test=5, valid=6)


# ------------------------------------------------------------------------------------------ real COSMIC pickles
def test_real_iemocap_metadata(data_dir):
    corpus = read_cosmic(data_dir / "erc/iemocap.pkl", IEMOCAP_FIELDS, IEMOCAP, 2, ["M", "F"])
    assert [len(corpus.splits[s]) for s in ("train", "valid", "test")] == [108, 12, 31]
    dialogues = [d for s in corpus.splits.values() for d in s]
    assert sum(len(d.labels) for d in dialogues) == 7433
    assert {int(x) for d in dialogues for x in d.labels} == set(range(6))
    assert {int(x) for d in dialogues for x in d.speakers} == {0, 1}
    assert all(len(d.sentences) == len(d.labels) for d in dialogues)


def test_real_meld_metadata_fixes_windows_1252(data_dir):
    corpus = read_cosmic(data_dir / "erc/meld.pkl", MELD_FIELDS, MELD, 9, None, "cp1252")
    assert [len(corpus.splits[s]) for s in ("train", "valid", "test")] == [1038, 114, 280]
    sentences = [s for split in corpus.splits.values() for d in split for s in d.sentences]
    assert len(sentences) == 13708
    assert not any("\x92" in s for s in sentences) and any("\u2019" in s for s in sentences)
    assert max(int(x) for split in corpus.splits.values() for d in split for x in d.speakers) < 9


# ------------------------------------------------------------------------------------------ written pickles
def write(path: Path, obj) -> Path:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)
    return path


def cosmic_like(tmp_path: Path) -> Path:
    speakers = {"d1": ["M", "F", "M"], "d2": ["F", "F"], "d3": ["M"]}
    labels = {"d1": [0, 5, 2], "d2": [1, 1], "d3": [4]}
    sentences = {"d1": ["a", "b", "c"], "d2": ["d", "e"], "d3": ["f"]}
    return write(tmp_path / "meta.pkl", [speakers, labels, sentences, ["d1"], ["d3"], ["d2"]])


def feature_tuple(layout: str, dims=(4, 3, 2), n_dialogues: int = 10, one_hot: bool = False) -> tuple:
    rng = np.random.default_rng(0)
    ids = [f"v{i}" for i in range(n_dialogues)]
    lengths = {k: 2 + i % 3 for i, k in enumerate(ids)}
    fields = {
        "ids": {k: list(range(n)) for k, n in lengths.items()},
        "speakers": {k: ([[1, 0, 0], [0, 0, 1]] * 3)[:n] if one_hot else (["M", "F"] * 3)[:n] for k, n in lengths.items()},
        # every class in every few dialogues, so inverse-frequency weights exist for each class of the train split
        "labels": {k: [(3 * i + j) % 6 for j in range(n)] for i, (k, n) in enumerate(lengths.items())},
        "text": {k: rng.normal(size=(n, dims[0])).tolist() for k, n in lengths.items()},
        "audio": {k: rng.normal(size=(n, dims[1])) for k, n in lengths.items()},
        "visual": {k: rng.normal(size=(n, dims[2])) for k, n in lengths.items()},
        "sentences": {k: [f"s{j}" for j in range(n)] for k, n in lengths.items()},
        "train": ids[:8],
        "test": ids[8:],
        "_": {},
    }
    return tuple(fields[name] for name in FEATURE_LAYOUTS[layout])


@pytest.mark.parametrize("layout,size", [("mmgcn_iemocap", 9), ("mmgcn_meld", 10), ("sdt_iemocap", 12), ("sdt_meld", 13)])
def test_feature_pickles_of_each_layout(tmp_path, layout, size):
    one_hot = layout.endswith("meld")
    data = feature_tuple(layout, one_hot=one_hot)
    assert len(data) == size
    path = write(tmp_path / f"{layout}.pkl", data)
    corpus = read_feature_pickle(
        path, layout, IEMOCAP, 3 if one_hot else 2, speaker_names=None if one_hot else ["M", "F"], valid_fraction=0.25
    )
    assert corpus.modality_dims == {"text": 4, "audio": 3, "visual": 2}
    train, valid, test = ([d.id for d in corpus.splits[s]] for s in ("train", "valid", "test"))
    assert sorted(train + valid) == [f"v{i}" for i in range(8)] and len(valid) == 2 and test == ["v8", "v9"]
    first = corpus.splits["test"][0]
    np.testing.assert_allclose(first.features["text"], np.asarray(data[3]["v8"], dtype=np.float32))
    assert first.speakers.tolist() == ([0, 2, 0, 2] if one_hot else [0, 1, 0, 1])[: len(first.labels)]


def test_cosmic_layout_reader_on_written_pickle(tmp_path):
    corpus = read_cosmic(cosmic_like(tmp_path), IEMOCAP_FIELDS, IEMOCAP, 2, ["M", "F"])
    assert [d.id for d in corpus.splits["valid"]] == ["d2"]
    assert corpus.splits["train"][0].speakers.tolist() == [0, 1, 0]
    assert corpus.splits["train"][0].labels.tolist() == [0, 5, 2]


# ------------------------------------------------------------------------------------------ bad input
def test_wrong_layout_names_the_expected_tuple(tmp_path):
    path = write(tmp_path / "f.pkl", feature_tuple("mmgcn_iemocap"))
    with pytest.raises(UserError, match="expects a 12-tuple"):
        read_feature_pickle(path, "sdt_iemocap", IEMOCAP, 2, speaker_names=["M", "F"])
    with pytest.raises(UserError, match="dataset.layout"):
        read_feature_pickle(path, "nope", IEMOCAP, 2)


def test_mismatched_feature_dims_are_named(tmp_path):
    data = list(feature_tuple("mmgcn_iemocap"))
    data[4]["v9"] = np.zeros((len(data[2]["v9"]), 7))
    with pytest.raises(UserError, match="audio features are 7-d, expected 3-d"):
        read_feature_pickle(write(tmp_path / "f.pkl", tuple(data)), "mmgcn_iemocap", IEMOCAP, 2, speaker_names=["M", "F"])


def test_empty_dialogue_and_out_of_range_labels(tmp_path):
    speakers = {"d1": ["M"], "d2": [], "d3": ["F"]}
    labels = {"d1": [0], "d2": [], "d3": [1]}
    sentences = {"d1": ["a"], "d2": [], "d3": ["b"]}
    path = write(tmp_path / "empty.pkl", [speakers, labels, sentences, ["d1"], ["d3"], ["d2"]])
    with pytest.raises(UserError, match="'d2' has no utterances"):
        read_cosmic(path, IEMOCAP_FIELDS, IEMOCAP, 2, ["M", "F"])
    labels = {"d1": [0], "d2": [9], "d3": [1]}
    path = write(tmp_path / "range.pkl", [speakers | {"d2": ["M"]}, labels, sentences | {"d2": ["c"]}, ["d1"], ["d3"], ["d2"]])
    with pytest.raises(UserError, match="label 9 outside 0..5"):
        read_cosmic(path, IEMOCAP_FIELDS, IEMOCAP, 2, ["M", "F"])


def test_missing_file_and_wrong_cosmic_layout(tmp_path):
    with pytest.raises(UserError, match="missing data file .*nothere.pkl"):
        read_cosmic(tmp_path / "nothere.pkl", IEMOCAP_FIELDS, IEMOCAP, 2, ["M", "F"])
    path = write(tmp_path / "short.pkl", [{}, {}])
    with pytest.raises(UserError, match="expected a COSMIC metadata list"):
        read_cosmic(path, IEMOCAP_FIELDS, IEMOCAP, 2, ["M", "F"])
    with pytest.raises(UserError, match="speaker 'X'"):
        read_cosmic(
            write(tmp_path / "spk.pkl", [{"d": ["X"]}, {"d": [0]}, {"d": ["a"]}, ["d"], ["d"], ["d"]]),
            IEMOCAP_FIELDS,
            IEMOCAP,
            2,
            ["M", "F"],
        )


# ------------------------------------------------------------------------------------------ batches
def test_collate_pads_with_masks_and_ignored_labels():
    corpus = synthetic_corpus(num_dialogues=(3, 1, 1), length=(2, 6), seed=1)
    dialogues = corpus.splits["train"]
    batch = collate_dialogues(dialogues)
    lengths = [len(d.labels) for d in dialogues]
    assert batch["mask"].sum(1).tolist() == lengths
    assert batch["features"]["text"].shape == (3, max(lengths), 32)
    assert torch.all(batch["labels"][~batch["mask"]] == -1)
    assert torch.all(batch["features"]["audio"][~batch["mask"]] == 0)
    torch.testing.assert_close(batch["features"]["visual"][1, : lengths[1]], torch.from_numpy(dialogues[1].features["visual"]))


def test_datamodule_seed_changes_only_training_order():
    module = ConversationDataModule(synthetic_corpus(num_dialogues=(20, 4, 4)), batch_size=4)
    orders = []
    for seed in (0, 0, 1):
        module.seed = seed
        orders.append([i for b in module.train_dataloader() for i in b["ids"]])
    assert orders[0] == orders[1] != orders[2] and sorted(orders[0]) == sorted(orders[2])
    valid, test = module.val_dataloader()
    assert [i for b in test for i in b["ids"]] == [d.id for d in module.corpus.splits["test"]]
    with pytest.raises(UserError, match="class_weights"):
        ConversationDataModule(synthetic_corpus(num_dialogues=(2, 1, 1)), class_weights=[1.0])


def test_synthetic_degradation_touches_only_its_modality():
    clean = synthetic_corpus(num_dialogues=(2, 1, 1), seed=3)
    noisy = synthetic_corpus(num_dialogues=(2, 1, 1), seed=3, degrade={"modality": "audio", "noise_std": 5.0, "drop_prob": 0.5})
    a, b = clean.splits["train"][0], noisy.splits["train"][0]
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.features["text"], b.features["text"])
    assert np.std(b.features["audio"]) > 2 * np.std(a.features["audio"])


def test_test_time_degradation_leaves_train_and_valid_identical_to_the_clean_corpus():
    """Runs at different degradation levels train on the same data: only the listed splits change."""
    clean = synthetic_corpus(num_dialogues=(3, 2, 2), seed=4)
    noisy = synthetic_corpus(num_dialogues=(3, 2, 2), seed=4, degrade={"modality": "audio", "noise_std": 3.0, "splits": ["test"]})
    for split in ("train", "valid"):
        for a, b in zip(clean.splits[split], noisy.splits[split]):
            for m in a.features:
                np.testing.assert_array_equal(a.features[m], b.features[m])
    for a, b in zip(clean.splits["test"], noisy.splits["test"]):
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.features["text"], b.features["text"])
        assert not np.allclose(a.features["audio"], b.features["audio"])
    with pytest.raises(UserError, match="degrade.splits"):
        synthetic_corpus(num_dialogues=(1, 1, 1), degrade={"modality": "audio", "splits": ["dev"]})


# ------------------------------------------------------------------------------------------ text features
def test_text_cache_is_read_and_keyed_by_content(tmp_path, monkeypatch):
    sentences = ["I am happy.", "I am sad."]
    name = f"toy-{text_features.sentences_hash(sentences, 128)}.npy"
    stored = np.arange(2 * 384, dtype=np.float32).reshape(2, 384)
    np.save(tmp_path / name, stored)
    monkeypatch.setattr(text_features, "encode", lambda *a, **k: pytest.fail("cache was not used"))
    np.testing.assert_array_equal(text_features.cached_embeddings(sentences, tmp_path, "toy"), stored)
    assert text_features.sentences_hash(sentences, 128) != text_features.sentences_hash(["I am happy!", "I am sad."], 128)


def test_unwritable_cache_falls_back(tmp_path, monkeypatch):
    import common.files

    monkeypatch.setattr(text_features, "FALLBACK_CACHE", tmp_path / "fallback")
    monkeypatch.setattr(common.files, "is_writable_dir", lambda p: Path(p) == tmp_path / "fallback")
    assert text_features.resolve_cache_dir("/read/only") == tmp_path / "fallback"


@pytest.mark.slow
def test_minilm_embeddings_are_normalised_and_meaningful(tmp_path):
    out = text_features.cached_embeddings(
        ["I am so happy today!", "What a joyful day.", "The invoice is attached."], tmp_path, "probe"
    )
    assert out.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    assert out[0] @ out[1] > out[0] @ out[2]


# ------------------------------------------------------------------------------------------ class weights, scaling
def test_inverse_frequency_weights_are_one_over_the_training_shares():
    corpus = synthetic_corpus(num_dialogues=(30, 4, 4), num_classes=3, seed=2)
    labels = np.concatenate([d.labels for d in corpus.splits["train"]])
    shares = np.bincount(labels, minlength=3) / len(labels)
    module = ConversationDataModule(corpus, class_weights="inverse_frequency")
    np.testing.assert_allclose(module.class_weights, 1 / shares)
    assert int(np.argmax(module.class_weights)) == int(np.argmin(shares))  # the rarest class weighs most


def test_real_iemocap_weights_make_the_rarest_training_class_weigh_most(data_dir):
    corpus = read_cosmic(data_dir / "erc/iemocap.pkl", IEMOCAP_FIELDS, IEMOCAP, 2, ["M", "F"])
    weights = ConversationDataModule(corpus, class_weights="inverse_frequency").class_weights
    counts = np.bincount(np.concatenate([d.labels for d in corpus.splits["train"]]), minlength=6)
    assert IEMOCAP[int(np.argmin(counts))] == "hap" and int(np.argmax(weights)) == IEMOCAP.index("hap")
    assert sorted(range(6), key=lambda c: weights[c]) == sorted(range(6), key=lambda c: -counts[c])


def test_the_shipped_iemocap_configs_weight_by_inverse_frequency():
    from omegaconf import OmegaConf

    from tests.conftest import CONF

    for name in ("iemocap_text", "iemocap_features"):
        assert OmegaConf.load(CONF / "dataset" / f"{name}.yaml").class_weights == "inverse_frequency", name


def test_literal_weights_are_kept_and_bad_ones_refused():
    corpus = synthetic_corpus(num_dialogues=(4, 1, 1), num_classes=2)
    assert ConversationDataModule(corpus, class_weights=[2.0, 0.5]).class_weights == [2.0, 0.5]
    with pytest.raises(UserError, match=r"dataset.class_weights='balanced': use inverse_frequency"):
        ConversationDataModule(corpus, class_weights="balanced")
    with pytest.raises(UserError, match=r"every weight must be > 0"):
        ConversationDataModule(corpus, class_weights=[1.0, 0.0])


def test_standardizing_uses_training_statistics_only():
    corpus = synthetic_corpus(num_dialogues=(10, 3, 3), seed=4)
    raw = {s: [{m: f.copy() for m, f in d.features.items()} for d in corpus.splits[s]] for s in ("train", "test")}
    module = ConversationDataModule(corpus, standardize=True)
    for m in corpus.modality_dims:
        train_raw = np.concatenate([f[m] for f in raw["train"]])
        mean, std = train_raw.mean(0), train_raw.std(0)
        scaled_train = np.concatenate([d.features[m] for d in module.corpus.splits["train"]])
        np.testing.assert_allclose(scaled_train.mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(scaled_train.std(0), 1, atol=1e-4)
        test = module.corpus.splits["test"][0].features[m]
        np.testing.assert_allclose(test, (raw["test"][0][m] - mean) / std, rtol=1e-4, atol=1e-5)
    assert ConversationDataModule(synthetic_corpus(num_dialogues=(2, 1, 1)), standardize=False).feature_stats is None


def test_degrading_touches_one_modality_in_the_named_splits_only():
    from data.conversations import degrade_corpus

    clean, noisy = (synthetic_corpus(num_dialogues=(6, 3, 3), seed=5) for _ in range(2))
    degrade_corpus(noisy, "audio", noise_std=2.0, drop_prob=0.3, splits=["test"], seed=1)
    for split in ("train", "valid", "test"):
        for a, b in zip(clean.splits[split], noisy.splits[split]):
            np.testing.assert_array_equal(a.labels, b.labels)
            np.testing.assert_array_equal(a.features["text"], b.features["text"])
            same_audio = np.array_equal(a.features["audio"], b.features["audio"])
            assert same_audio == (split != "test"), split
    rows = np.concatenate([d.features["audio"] for d in noisy.splits["test"]])
    assert 0 < np.mean(~rows.any(axis=1)) < 0.7  # some utterances zeroed, not all


def test_the_data_module_degrades_after_scaling_and_levels_are_paired():
    def module(noise: float) -> ConversationDataModule:
        degrade = {"modality": "audio", "noise_std": noise, "drop_prob": 0.0, "splits": ["test"], "seed": 0}
        return ConversationDataModule(synthetic_corpus(num_dialogues=(8, 3, 3), seed=6), standardize=True, degrade=degrade)

    zero, two = module(0.0), module(2.0)
    for split in ("train", "valid"):
        for a, b in zip(zero.corpus.splits[split], two.corpus.splits[split]):
            np.testing.assert_array_equal(a.features["audio"], b.features["audio"])
    diff = np.concatenate(
        [b.features["audio"] - a.features["audio"] for a, b in zip(*(m.corpus.splits["test"] for m in (zero, two)))]
    )
    assert abs(diff.std() - 2.0) < 0.2  # noise in training standard deviations: the features were scaled first
    with pytest.raises(UserError, match=r"dataset.degrade.modality='smell' is not one of the modalities"):
        ConversationDataModule(synthetic_corpus(num_dialogues=(2, 1, 1)), degrade={"modality": "smell"})


def test_inverse_frequency_refuses_a_class_without_training_utterances():
    corpus = synthetic_corpus(num_dialogues=(3, 1, 1), num_classes=3, seed=0)
    for dialogue in corpus.splits["train"]:
        dialogue.labels[dialogue.labels == 2] = 0  # class c2 now only outside the train split
    with pytest.raises(UserError, match=r"class \['c2'\] has no training utterance; give the weights as a list"):
        ConversationDataModule(corpus, class_weights="inverse_frequency")
