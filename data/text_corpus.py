"""Plain-text corpora for language-model perplexity: WikiText-2 test and a TinyStories subset under
`<data root>/llm/text/`, or any UTF-8 text file by path; cut into non-overlapping token windows.

Windows follow the usual HF perplexity recipe (the whole file tokenised once, no BOS, stride =
window, the last partial window dropped), bounded by a token budget so CPU runs stay short; every
condition of a run is scored on the same windows, so relative figures are paired.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from common.errors import UserError
from common.files import require_file

# name -> (path under the data root, where to get it)
CORPORA: dict[str, tuple[str, str]] = {
    "wikitext2": (
        "llm/text/wikitext-2_test.txt",
        "WikiText-2 (raw) test split, e.g. wiki.test.tokens from https://huggingface.co/datasets/Salesforce/wikitext",
    ),
    "tinystories": (
        "llm/text/tinystories_val_subset.txt",
        "a TinyStories validation text file, e.g. TinyStories-valid.txt from https://huggingface.co/datasets/roneneldan/TinyStories",
    ),
}


def corpus_path(name_or_path: str | Path, data_dir: str | Path) -> Path:
    """A registered corpus name (`wikitext2`, `tinystories`) or a text file path."""
    if str(name_or_path) in CORPORA:
        relative, how = CORPORA[str(name_or_path)]
        return require_file(Path(data_dir) / relative, f"put {how} there (data root = paths.data_dir)")
    path = Path(name_or_path).expanduser()
    if path.suffix == "" and not path.exists():
        raise UserError(f"text corpus {name_or_path!r}: not a known corpus ({', '.join(CORPORA)}) nor a file")
    return require_file(path, "pass an existing UTF-8 text file (eval.text_file=...)")


def read_text(path: Path, max_chars: int | None = None) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; convert it (iconv -t utf-8) or pass another file") from None
    text = text[:max_chars] if max_chars else text
    if not text.strip():
        raise UserError(f"{path}: the file is empty")
    return text


def token_windows(encode: Callable[[str], Sequence[int]], text: str, window: int, max_tokens: int | None = None) -> Tensor:
    """(n, window) LongTensor of consecutive non-overlapping windows of the encoded text, at most
    `max_tokens` tokens in all (rounded down to whole windows; at least one window)."""
    if window < 2:
        raise UserError(f"window={window}: need at least 2 tokens per window")
    ids = list(encode(text))
    n = len(ids) // window
    if max_tokens is not None:
        n = min(n, max(1, int(max_tokens) // window))
    if n == 0:
        raise UserError(f"text has {len(ids)} tokens, fewer than one window of {window}; lower the window")
    return torch.tensor(ids[: n * window], dtype=torch.long).view(n, window)


def corpus_windows(
    name_or_path: str | Path,
    data_dir: str | Path,
    encode: Callable[[str], Sequence[int]],
    window: int,
    max_tokens: int | None = None,
) -> Tensor:
    """Read a corpus and cut it into windows; reads only a prefix of long files when a budget is set
    (about 12 characters per token is far more than any sub-word tokenizer needs)."""
    path = corpus_path(name_or_path, data_dir)
    max_chars = None if max_tokens is None else max(int(max_tokens), window) * 12
    return token_windows(encode, read_text(path, max_chars), window, max_tokens)
