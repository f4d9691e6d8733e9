"""User-facing errors: one line naming what to fix, never a traceback.

Anything a user can get wrong (a config value, a missing data file, an unwritable directory) is raised
as :class:`UserError`; ``run.py`` prints its message on one line and exits with status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

T = TypeVar("T")


class UserError(Exception):
    """An error caused by the user's input; its message says what to fix."""


def missing_file(path: str | Path, how_to_get: str) -> UserError:
    """Error for a data file that is not where the config says it is."""
    return UserError(f"missing data file {path}: {how_to_get}")


def print_error(message: str) -> None:
    """The one form of a user-facing error: `error: <message>` on one line of stderr."""
    print(f"error: {message}", file=sys.stderr)


def exit_with_error(message: str, status: int = 2) -> NoReturn:
    """Print the error line and exit (status 2): how every bad input ends."""
    print_error(message)
    raise SystemExit(status) from None


def exit_on_user_error(main: Callable[[], T]) -> T:
    """Call a command-line `main`; a :class:`UserError` it raises ends the process in one line, status 2."""
    try:
        return main()
    except UserError as exc:
        exit_with_error(str(exc))
