"""Signatures read from source files agree with the imported ones, and never need an import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from experiments.core.validation.config_check import imported_signature
from experiments.core.validation.source_signatures import is_certainly_missing, source_signature
from tests.conftest import CONF

TARGETS = sorted(
    {
        line.split("_target_:")[1].split("#")[0].strip()
        for path in CONF.rglob("*.yaml")
        for line in path.read_text().splitlines()
        if "_target_:" in line and not line.lstrip().startswith("#")
    }
)


@pytest.mark.parametrize("target", TARGETS)
def test_a_signature_read_from_source_matches_the_imported_one(target: str) -> None:
    read = source_signature(target)
    if read is None:
        pytest.skip(f"{target}: constructor inherited or not readable; the import pass checks it")
    imported = imported_signature(target, "key")
    assert list(read.params) == list(imported.params)
    assert read.accepts_kwargs == imported.accepts_kwargs
    for name, hint in read.params.items():
        if hint is not __import__("inspect").Parameter.empty and imported.params[name] in (int, float, str, bool):
            assert hint == imported.params[name], name


def test_most_shipped_targets_are_readable_from_source() -> None:
    readable = [t for t in TARGETS if source_signature(t) is not None]
    assert len(readable) >= 0.8 * len(TARGETS), sorted(set(TARGETS) - set(readable))


@pytest.mark.parametrize(
    ("target", "missing"),
    [
        ("models.nowhere.Net", True),
        ("data.xor.NoSuchModule", True),
        ("no_such_package.Thing", True),
        ("torch.optim.NoSuchOptimiser", True),
        ("data.xor.XorDataModule", False),
        ("torch.optim.Adam", False),
        ("torch.nn.NoSuchLayer", False),  # torch.nn re-exports with `import *`: only the import can tell
        ("transformers.NoSuchModel", False),  # a lazy package: only the import can tell
    ],
)
def test_only_certainly_missing_targets_are_called_missing(target: str, missing: bool) -> None:
    assert is_certainly_missing(target) is missing


def test_reading_signatures_imports_neither_torch_nor_lightning() -> None:
    code = (
        "import sys; from experiments.core.validation.source_signatures import source_signature as s;"
        "s('torch.optim.Adam'); s('lightning.pytorch.Trainer'); s('data.xor.XorDataModule');"
        "print('torch' in sys.modules or 'lightning' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
