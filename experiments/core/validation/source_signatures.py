"""Signatures of `_target_` classes and functions read from their source files, without importing them.

Importing a target to check a config value pulls in torch and Lightning (~5 s on two cores), so a
typo like `dataset.n_train=abc` would take as long to report as a real run takes to start. Parsing
the target's module with :mod:`ast` finds its parameters and annotations in milliseconds. Whatever
this reader cannot follow (a class that inherits its constructor, a name bound by assignment, an
annotation naming a type it cannot see) comes back as "unknown", and the import-based check that
runs afterwards decides; so this pass may miss an error but never reports one the import pass would not.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import typing
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from common.ranges import Range

_MAX_REEXPORT_HOPS = 6


@dataclass(frozen=True)
class TargetSignature:
    """Parameter names with their type hints (`inspect.Parameter.empty` where unknown)."""

    params: dict[str, Any]
    accepts_kwargs: bool


# Stands for torch's Tensor in annotations (`lr: float | Tensor`): a YAML value is never one.
_TorchTensor = type("Tensor", (), {"__module__": "torch"})


class _Opaque:
    """Any name the reader cannot resolve; typing constructs refuse it, which marks the hint unknown."""

    def __getattr__(self, _name: str) -> _Opaque:
        return self

    def __getitem__(self, _item: Any) -> _Opaque:
        return self

    def __call__(self, *_args: Any, **_kwargs: Any) -> _Opaque:
        return self

    def __or__(self, _other: Any) -> _Opaque:
        return self

    __ror__ = __or__


class _Names(dict):
    """Evaluation namespace for annotation text: typing names, builtins, Range; anything else opaque."""

    def __missing__(self, key: str) -> Any:
        return _Opaque()


@lru_cache(maxsize=1)
def _namespace() -> _Names:
    """Built once: every annotation of every target is evaluated against the same names."""
    names = _Names({name: getattr(typing, name) for name in typing.__all__})
    names.update(
        int=int, float=float, str=str, bool=bool, list=list, dict=dict, tuple=tuple, typing=typing,
        Range=Range, Tensor=_TorchTensor, torch=_Opaque(),
    )  # fmt: skip
    return names


def _module_file(module: str) -> Path | None:
    """The source file of a dotted module name, found without executing any package."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin.endswith(".py") else None
    if not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        base = Path(root).joinpath(*rest)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


@lru_cache(maxsize=256)
def _parse(path: Path) -> ast.Module | None:
    try:
        return ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None


def _resolve_relative(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


Definition = tuple[str, ast.ClassDef | ast.FunctionDef]  # (module it is defined in, its node)


def _definition(module: str, name: str, hops: int = 0) -> Definition | None:
    """The top-level class or function `name` of `module`, following `from x import name` re-exports."""
    path = _module_file(module)
    tree = _parse(path) if path is not None else None
    if tree is None or hops > _MAX_REEXPORT_HOPS:
        return None
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == name:
            return module, node
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    source = _resolve_relative(module, path.name == "__init__.py", node)
                    return _definition(source, alias.name, hops + 1)
    return None


def _hint(annotation: ast.expr | None) -> Any:
    if annotation is None:
        return inspect.Parameter.empty
    try:
        text = ast.unparse(annotation)
        if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
            text = annotation.value  # a quoted forward reference
        hint = eval(text, {"__builtins__": {}}, _namespace())  # noqa: S307  (names are typing's only)
    except Exception:
        return inspect.Parameter.empty
    return inspect.Parameter.empty if isinstance(hint, _Opaque) else hint


def _function_signature(func: ast.FunctionDef, skip_first: bool) -> TargetSignature:
    args = func.args
    positional = [*args.posonlyargs, *args.args][1 if skip_first else 0 :]
    params = {arg.arg: _hint(arg.annotation) for arg in [*positional, *args.kwonlyargs]}
    return TargetSignature(params=params, accepts_kwargs=args.kwarg is not None)


def _is_dataclass(node: ast.ClassDef) -> bool:
    return any(ast.unparse(d).split("(")[0].split(".")[-1] == "dataclass" for d in node.decorator_list)


def _class_signature(module: str, node: ast.ClassDef, depth: int = 0) -> TargetSignature | None:
    """`__init__`'s parameters; a dataclass's fields (its dataclass bases' first); else the single
    base class's constructor. None where the constructor comes from somewhere this reader cannot see."""
    for item in node.body:
        if isinstance(item, ast.FunctionDef) and item.name == "__init__":
            return _function_signature(item, skip_first=True)
    base = _single_base(module, node) if depth < _MAX_REEXPORT_HOPS else None
    if _is_dataclass(node):
        inherited = TargetSignature(params={}, accepts_kwargs=False) if not node.bases else None
        if base is not None and _is_dataclass(base[1]):
            inherited = _class_signature(*base, depth=depth + 1)
        if inherited is None:
            return None
        own = {
            item.target.id: _hint(item.annotation)
            for item in node.body
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
            and "ClassVar" not in ast.unparse(item.annotation)
        }  # fmt: skip
        return TargetSignature(params={**inherited.params, **own}, accepts_kwargs=False)
    return _class_signature(*base, depth=depth + 1) if base is not None else None


def _single_base(module: str, node: ast.ClassDef) -> Definition | None:
    """The class a single-inheritance class derives from, when it is defined in readable source."""
    if len(node.bases) != 1 or node.keywords or not isinstance(node.bases[0], ast.Name):
        return None
    found = _definition(module, node.bases[0].id)
    return found if found is not None and isinstance(found[1], ast.ClassDef) else None


def source_signature(target_path: str) -> TargetSignature | None:
    """The signature of `target_path` (``pkg.module.Name``) from source, or None when it cannot tell."""
    module, _, name = target_path.rpartition(".")
    found = _definition(module, name) if module else None
    if found is None:
        return None
    if isinstance(found[1], ast.FunctionDef):
        return _function_signature(found[1], skip_first=False)
    return _class_signature(*found)


def _bound_names(tree: ast.Module) -> set[str] | None:
    """Names a module binds at top level (also inside if/try/with); None when it may bind others
    dynamically (`import *`, a module `__getattr__`, a `sys.modules` swap as lazy packages do)."""
    names: set[str] = set()

    def visit(statements: list[ast.stmt]) -> bool:
        for node in statements:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    if alias.name == "*":
                        return False
                    names.add(alias.asname or alias.name.split(".")[0])
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if "sys.modules" in ast.unparse(target):
                        return False
                    names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
            for block in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, block, None)
                if isinstance(children, list) and not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    if not visit([c for c in children if isinstance(c, ast.stmt)] + [
                        s for h in children if isinstance(h, ast.ExceptHandler) for s in h.body
                    ]):  # fmt: skip
                        return False
        return True

    if not visit(tree.body) or "__getattr__" in names:
        return None
    return names


def is_certainly_missing(target_path: str) -> bool:
    """True only when no module file defines `target_path`: its top package does not exist, or the
    deepest module found by path neither binds the next name nor has it as a submodule."""
    parts = target_path.split(".")
    try:
        if importlib.util.find_spec(parts[0]) is None:
            return True
    except (ImportError, ValueError):
        return False
    for depth in range(len(parts) - 1, 0, -1):
        path = _module_file(".".join(parts[:depth]))
        if path is not None:
            tree = _parse(path)
            bound = _bound_names(tree) if tree is not None else None
            return bound is not None and parts[depth] not in bound
    return False
