"""`python run.py --help`: the usage and every config group with its options, listed from the files in conf/.

Hydra's own `--help` composes the whole config once per group to list them (seconds); this reads the
directory tree instead, before Hydra, torch or Lightning are imported (standard library only).
Options that Hydra and its installed plugins add to a `hydra/...` group (e.g. the joblib and submitit
launchers) are read from their source, where they register them with `ConfigStore.store(group=..., name=...)`.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

CONF = Path(__file__).resolve().parents[2] / "conf"
HELP_FLAGS = frozenset({"-h", "--help"})
OTHER_CONFIG_DIR = frozenset({"-cp", "--config-path", "-cd", "--config-dir"})  # Hydra's help lists what those add


def asks_for_help(argv: Sequence[str]) -> bool:
    """`-h`/`--help` anywhere on the command line (with overrides too, as Hydra), unless another config dir is named."""
    return bool(HELP_FLAGS.intersection(argv)) and not any(arg.split("=", 1)[0] in OTHER_CONFIG_DIR for arg in argv)


def config_groups(conf: Path = CONF) -> dict[str, list[str]]:
    """{group: sorted options}: every directory under `conf` holding `*.yaml` files (nested ones as `a/b`)."""
    groups = {}
    for directory in sorted(path for path in conf.rglob("*") if path.is_dir()):
        relative = directory.relative_to(conf)
        if any(part.startswith((".", "_")) for part in relative.parts):
            continue  # .ipynb_checkpoints, __pycache__: not config groups
        options = sorted(path.stem for path in directory.glob("*.yaml") if path.is_file())
        if options:
            groups[relative.as_posix()] = options
    return dict(sorted(groups.items()))


def _package_dirs(name: str) -> list[Path]:
    """Where top-level package `name` lives, without importing it (a namespace package may have several)."""
    spec = importlib.util.find_spec(name)
    return [Path(path) for path in (spec.submodule_search_locations or [])] if spec else []


def _stored_names(source: Path, group: str) -> Iterator[str]:
    """`name` of each `<ConfigStore>.store(group=<group>, name="...")` call in a Python file."""
    text = source.read_text(encoding="utf-8", errors="replace")
    if group not in text:
        return
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "store":
            keywords = {keyword.arg: keyword.value for keyword in node.keywords}
            group_node, name_node = keywords.get("group"), keywords.get("name")
            if (
                isinstance(group_node, ast.Constant)
                and group_node.value == group
                and isinstance(name_node, ast.Constant)
                and isinstance(name_node.value, str)
            ):
                yield name_node.value


def hydra_options(group: str) -> list[str]:
    """Options of a `hydra/...` group that come with Hydra itself and with the installed Hydra plugins."""
    names: set[str] = set()
    sources: list[Iterable[Path]] = []
    for hydra_dir in _package_dirs("hydra"):
        names.update(path.stem for path in (hydra_dir / "conf" / group).glob("*.yaml"))
        sources.append((hydra_dir / "_internal" / "core_plugins").glob("*.py"))
    sources.extend(plugin_dir.rglob("*.py") for plugin_dir in _package_dirs("hydra_plugins"))
    for files in sources:
        for source in files:
            names.update(_stored_names(source, group))
    return sorted(names)


def help_text(header: str, conf: Path = CONF) -> str:
    lines = [
        header.strip(),
        "",
        "== Configuration groups ==",
        "Compose your configuration from those groups (group=option)",
        "",
    ]
    for group, options in config_groups(conf).items():
        line = f"{group}: {', '.join(options)}"
        if group.startswith("hydra/"):
            others = [name for name in hydra_options(group) if name not in options]
            if others:
                line += f"; from Hydra and its installed plugins: {', '.join(others)}"
        lines.append(line)
    lines += [
        "",
        "== Config ==",
        "Override anything in the config (foo.bar=value)",
        "",
        "The composed config:  python run.py [group=option ...] --cfg job  (--cfg hydra: Hydra's part; --resolve: resolved)",
        "Hydra's own help:     python run.py --hydra-help",
    ]
    return "\n".join(lines)


def print_help(header: str) -> None:
    print(help_text(header))
