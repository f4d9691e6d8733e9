"""User-facing errors: one line naming what to fix, never a traceback.

Anything a user can get wrong (a config value, a missing data file, an unwritable directory) is raised
as :class:`UserError`; ``run.py`` prints its message on one line and exits with status 2.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """An error caused by the user's input; its message says what to fix."""


def missing_file(path: str | Path, how_to_get: str) -> UserError:
    """Error for a data file that is not where the config says it is."""
    return UserError(f"missing data file {path}: {how_to_get}")
