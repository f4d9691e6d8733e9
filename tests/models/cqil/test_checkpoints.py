"""Checkpoint loading stays quiet: the GGUF reader's own progress bar is switched off while loading."""

from __future__ import annotations

import transformers.modeling_gguf_pytorch_utils as gguf_utils

from models.cqil.checkpoints import _no_gguf_progress_bar


def test_the_gguf_progress_bar_is_a_pass_through_while_loading_and_restored_after(capsys) -> None:
    original = gguf_utils.tqdm
    with _no_gguf_progress_bar():
        assert list(gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors...")) == [0, 1, 2]
    assert "Converting" not in capsys.readouterr().err
    assert gguf_utils.tqdm is original
