"""Early validation of `_target_` nodes against the signature of what they instantiate.

A wrong key or type in a YAML file or on the command line would otherwise surface deep inside a
constructor as a long traceback. Here every config node with a `_target_` is checked before anything
runs: unknown keys and values whose type cannot match the parameter's annotation become a
:class:`UserError` naming the full key and the expected type.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from common.errors import UserError
from common.ranges import Range
from experiments.core.resolvers import GPU_ACCELERATORS
from experiments.core.validation.source_signatures import TargetSignature, is_certainly_missing, source_signature

# Ranges for parameters of other libraries' classes, matched by class-path prefix and parameter name.
TARGET_RANGES: dict[tuple[str, str], Range] = {
    ("torch.optim.", "lr"): Range(gt=0),
    ("torch.optim.", "weight_decay"): Range(ge=0),
    ("torch.optim.", "momentum"): Range(ge=0),
    ("lightning.pytorch.Trainer", "max_epochs"): Range(ge=1, allow=(-1,)),
    ("lightning.pytorch.Trainer", "devices"): Range(ge=1, allow=(-1, "auto")),
    ("lightning.pytorch.Trainer", "num_nodes"): Range(ge=1),
}
# Ranges for plain config keys (no `_target_`), by full key.
KEY_RANGES: dict[str, Range] = {
    "seed": Range(ge=0, lt=2**32),  # numpy's seeding range
    "task.num_seeds": Range(ge=1),
    "task.limit": Range(ge=1),
}

_UNKNOWN = object()  # an annotation this checker does not understand: accept any value


def _matches(value: Any, hint: Any) -> bool | object:
    """True/False when `value` clearly does / does not fit `hint`; _UNKNOWN when it cannot tell."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        results = [_matches(value, h) for h in typing.get_args(hint)]
        if any(r is True for r in results):
            return True
        return _UNKNOWN if any(r is _UNKNOWN for r in results) else False
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if value is None:
        return False
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence) or hint in (list, tuple):
        return isinstance(value, (list, tuple, ListConfig)) or _UNKNOWN
    if origin is dict or hint is dict:
        return isinstance(value, (dict, DictConfig)) or _UNKNOWN
    if isinstance(hint, type) and hint.__module__.split(".")[0] == "torch":
        return False  # a YAML value is never a torch object (e.g. the Tensor in Adam's `lr: float | Tensor`)
    return _UNKNOWN


def _strip_annotated(hint: Any) -> Any:
    """`Annotated[T, ...]` -> T, also inside unions (`Annotated[float, Range(gt=0)] | None`)."""
    if typing.get_origin(hint) is typing.Annotated:
        return typing.get_args(hint)[0]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = tuple(_strip_annotated(a) for a in typing.get_args(hint))
        return typing.Union[args]  # noqa: UP007  (built at run time from a tuple)
    return hint


def _describe(hint: Any) -> str:
    """`int | None`, `float | Tensor`, `Literal['a', 'b']`: how a person would write the type."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join("None" if h is type(None) else _describe(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is not None:
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _range_of(hint: Any, target_path: str, name: str) -> Range | None:
    """A Range from `Annotated[..., Range(...)]` (also inside Optional), else from TARGET_RANGES."""
    for candidate in (hint, *typing.get_args(hint)):
        if typing.get_origin(candidate) is typing.Annotated:
            for meta in candidate.__metadata__:
                if isinstance(meta, Range):
                    return meta
    for (prefix, param), bound in TARGET_RANGES.items():
        if target_path.startswith(prefix) and name == param:
            return bound
    return None


def check_key_ranges(cfg: DictConfig, ranges: dict[str, Range] | None = None) -> None:
    """Plain keys with known ranges (seed, task.num_seeds, ...); a task adds its own in `task.ranges`."""
    ranges = dict(KEY_RANGES if ranges is None else ranges)
    for key, spec in (cfg.get("task") or {}).get("ranges", {}).items():
        ranges[str(key)] = Range(**spec)
    for key, bound in ranges.items():
        value = OmegaConf.select(cfg, key, default=None)
        problem = bound.violation(value)
        if problem:
            raise UserError(f"{key}={value!r} {problem}; fix the value")


def check_accelerator(cfg: DictConfig) -> None:
    """A GPU asked of a task whose code computes on CPU only is refused, not ignored: `task.accelerators`
    lists what the task's code runs on (a SLURM job would otherwise hold a GPU it never uses)."""
    supported = (cfg.get("task") or {}).get("accelerators")
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="cpu")).lower()
    if supported is None or accelerator not in GPU_ACCELERATORS or "gpu" in [str(a).lower() for a in supported]:
        return
    note = cfg.task.get("accelerator_note")
    raise UserError(
        f"trainer.accelerator={accelerator}: the {cfg.task.get('name')} task computes on CPU only "
        f"(task.accelerators={list(supported)}); set trainer.accelerator=cpu" + (f" ({note})" if note else "")
    )


def imported_signature(target_path: str, key: str) -> TargetSignature:
    """The signature of the imported target (imports its module: torch, Lightning, ...)."""
    try:
        target = get_object(target_path)
    except Exception as exc:  # hydra raises several types for a bad import path
        raise UserError(f"{key}._target_: cannot import '{target_path}' ({exc.__class__.__name__}); fix the path") from None
    func = target.__init__ if inspect.isclass(target) else target
    signature = inspect.signature(func)
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception:  # unresolvable forward references: fall back to no type information
        hints = {}
    params = signature.parameters
    return TargetSignature(
        params={
            name: hints.get(name, p.annotation)
            for name, p in params.items()
            if name != "self" and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        },
        accepts_kwargs=any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()),
    )


def read_signature(target_path: str, key: str) -> TargetSignature | None:
    """The signature read from the target's source file without importing it; None when unknown."""
    if is_certainly_missing(target_path):
        raise UserError(f"{key}._target_: cannot import '{target_path}' (ImportError); fix the path")
    return source_signature(target_path)


SignatureOf = Callable[[str, str], "TargetSignature | None"]


def check_target_node(node: DictConfig, key: str, signature_of: SignatureOf = imported_signature) -> None:
    """Check one `_target_` node's keys and value types against the target's signature."""
    target_path = node._target_
    signature = signature_of(target_path, key)
    if signature is None:
        return
    params = signature.params
    for name in node:
        if str(name).startswith("_") and str(name).endswith("_"):
            continue
        full_key = f"{key}.{name}" if key else str(name)
        if name not in params:
            if signature.accepts_kwargs:
                continue
            valid = ", ".join(params)
            raise UserError(f"{full_key}: '{name}' is not a parameter of {target_path} (valid: {valid})")
        if OmegaConf.is_missing(node, name):
            continue
        value_node = node._get_node(name)
        source = f" (set by {value_node._value()})" if value_node._is_interpolation() else ""
        try:
            value = node[name]
        except OmegaConfBaseException:
            continue  # resolvable only inside a running job (e.g. ${hydra:...}); checked there
        if isinstance(value, DictConfig) and "_target_" in value:
            continue  # a nested object; checked on its own
        hint = params[name]
        if _matches(value, _strip_annotated(hint)) is False:
            raise UserError(
                f"{full_key}={value!r}{source} has type {type(value).__name__}, but {target_path} expects {_describe(_strip_annotated(hint))}; fix the value"
            )
        bound = _range_of(hint, target_path, str(name))
        problem = bound.violation(value) if bound is not None else None
        if problem:
            raise UserError(f"{full_key}={value!r}{source} {problem} ({target_path}); fix the value")


def check_targets(cfg: DictConfig, roots: Iterable[str] | None = None, signature_of: SignatureOf = imported_signature) -> None:
    """Check every `_target_` node under the given top-level keys (recursively); all keys but `hydra`
    by default, so a task's own groups (e.g. `polarity.source.dataset`) are checked like `model`.
    With `signature_of=read_signature` nothing is imported (the fast pass before the task loads)."""
    if roots is None:
        roots = [key for key in cfg if key != "hydra"]

    def walk(node: Any, key: str) -> None:
        if isinstance(node, DictConfig):
            if "_target_" in node:
                check_target_node(node, key, signature_of)
            for child in node:
                child_node = node._get_node(child)
                if isinstance(child_node, (DictConfig, ListConfig)):
                    walk(node[child], f"{key}.{child}" if key else str(child))
        elif isinstance(node, ListConfig):
            for i, item in enumerate(node):
                walk(item, f"{key}[{i}]")

    for root in roots:
        if root in cfg and cfg[root] is not None:
            walk(cfg[root], root)
