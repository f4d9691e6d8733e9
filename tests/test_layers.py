"""The layering rules of docs/architecture.md, checked on every module's imports (top-level and local)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

RULES = {
    # package: prefixes its modules may never import
    "common": ("experiments", "data", "models"),
    "data": ("experiments", "models"),
    "models": ("experiments",),
    "experiments/core": ("experiments.tasks", "experiments.analysis", "experiments.cluster"),
    "experiments/analysis": ("experiments.tasks", "experiments.cluster"),
    "experiments/cluster": ("experiments.tasks", "experiments.analysis"),
}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(RULES))
def test_a_layer_never_imports_the_layers_above_it(package):
    forbidden = RULES[package]
    modules = sorted((REPO / package).rglob("*.py"))
    assert modules, f"{package} has no modules: the rule table is stale"
    offences = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in modules
        for name in sorted(imported_modules(path))
        if any(name == prefix or name.startswith(prefix + ".") for prefix in forbidden)
    ]
    assert not offences, "\n".join(offences)


def test_the_rule_checker_sees_local_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from experiments.tasks.recsys import task\n")
    assert "experiments.tasks.recsys" in imported_modules(module)
