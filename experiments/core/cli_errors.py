"""Hydra's own composition errors (unknown option, unknown key, bad override syntax) as one line.

Hydra prints these over several lines (an option list, a `full_key:` block, a hint about
HYDRA_FULL_ERROR) and exits with status 1. Here they become one `error: ...` line with exit status 2,
like every other bad input. Errors raised by the task itself keep Hydra's usual report.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable

from common.errors import exit_with_error

_FLAG = "HYDRA_FULL_ERROR"
_SET_HERE = "_FIVEFOLD_SET_HYDRA_FULL_ERROR"


def one_line(error: BaseException) -> str:
    """The message of a composition error and of its cause, folded onto one line."""
    text = str(error).strip()
    options = re.search(r"Available options in '([^']+)':\s*(.*)", text, flags=re.S)
    if options:
        head = text[: options.start()].strip()
        listing = options.group(2).split("Config search path:")[0]
        choices = ", ".join(line.strip() for line in listing.splitlines() if line.strip())
        text = f"{head}; options in '{options.group(1)}': {choices}"
    text = " ".join(text.split())
    cause = error.__cause__
    if cause is not None and str(cause).strip():
        text += f" ({str(cause).strip().splitlines()[0]})"
    return text


def sweep_hint(message: str, argv: list[str]) -> str:
    """A hint for a key of a swept group's options: Hydra first composes a sweep's config with the group's
    default option, which may lack the key, so the override must be forced (`++`)."""
    unknown = re.search(r"Could not override '([^']+)'", message)
    if not unknown:
        return ""
    key = unknown.group(1)
    group = key.split(".")[0]
    swept = [arg for arg in argv if arg.startswith(f"{group}=") and "," in arg]
    if not swept:
        return ""
    value = next((arg.split("=", 1)[1] for arg in argv if arg.startswith(f"{key}=")), "...")
    return f"; in a sweep over {swept[0]}, force keys of those options with ++{key}={value}"


def call_with_one_line_errors(main: Callable[[], object]) -> None:
    """Run Hydra's `main()`; a composition error exits 2 with one line. HYDRA_FULL_ERROR is set only
    until the task starts (see :func:`task_started`), so a task's own crash is reported as usual."""
    from hydra.errors import CompactHydraException, InstantiationException

    if os.environ.get(_FLAG) is None:
        os.environ[_FLAG] = "1"
        os.environ[_SET_HERE] = "1"
    try:
        main()
    except (CompactHydraException, ValueError) as error:
        if isinstance(error, InstantiationException) or not os.environ.get(_SET_HERE):
            raise
        message = one_line(error)
        exit_with_error(message + sweep_hint(message, sys.argv[1:]))


def task_started() -> None:
    """Hand error reporting back to Hydra once composition has succeeded."""
    if os.environ.pop(_SET_HERE, None):
        os.environ.pop(_FLAG, None)
