"""Text corpora readers and token windows (WikiText-2 / TinyStories under the data root, any file by path)."""

from __future__ import annotations

import pytest
import torch

from common.errors import UserError
from data.text_corpus import CORPORA, corpus_path, corpus_windows, token_windows


def encode_bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def test_windows_are_consecutive_and_bounded():
    text = "abcdefghij" * 10  # 100 tokens
    w = token_windows(encode_bytes, text, window=16, max_tokens=50)
    assert w.shape == (3, 16) and w.dtype == torch.long
    assert w.flatten().tolist() == encode_bytes(text)[:48]
    assert token_windows(encode_bytes, text, window=16).shape == (6, 16)  # last partial window dropped
    assert token_windows(encode_bytes, text, window=16, max_tokens=3).shape == (1, 16)  # at least one


def test_too_short_and_bad_window_are_clear_errors():
    with pytest.raises(UserError, match="fewer than one window"):
        token_windows(encode_bytes, "short", window=16)
    with pytest.raises(UserError, match="at least 2"):
        token_windows(encode_bytes, "short", window=1)


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_real_corpora_are_read(data_dir, name):
    path = corpus_path(name, data_dir)
    assert path.is_file()
    w = corpus_windows(name, data_dir, encode_bytes, window=256, max_tokens=1024)
    assert w.shape == (4, 256)
    text = bytes(w.flatten().tolist()).decode("utf-8", errors="ignore")
    assert ("Robert" in text) if name == "wikitext2" else ("Spot" in text or "Once" in text)


def test_any_text_file_by_path_and_missing_files(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("hello world " * 50, encoding="utf-8")
    assert corpus_windows(f, tmp_path, encode_bytes, window=100).shape == (6, 100)
    with pytest.raises(UserError, match="missing data file .*wikitext-2_test.txt.*huggingface"):
        corpus_path("wikitext2", tmp_path)
    with pytest.raises(UserError, match="not a known corpus"):
        corpus_path("pennbank", tmp_path)
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(UserError, match="empty"):
        corpus_windows(tmp_path / "empty.txt", tmp_path, encode_bytes, window=4)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\xfa" * 10)
    with pytest.raises(UserError, match="not UTF-8"):
        corpus_windows(tmp_path / "bin.txt", tmp_path, encode_bytes, window=4)
