"""Files every layer needs: atomic writes, downloads that never leave a half file, missing-file errors.

Data families (images, conversations, ratings, videos, text corpora) share these so a missing file
always stops with one line naming the path and where to get it, and an interrupted download or write
never leaves a file that looks complete.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from common.errors import UserError, missing_file

log = logging.getLogger(__name__)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write via a temporary file in the same folder and rename: a reader never sees half a file."""
    return atomic_write_with(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_with(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Let `write(tmp_path)` produce the file (cv2 writers, torch.save, savefig...), then rename it into
    place; on any failure the temporary file is removed and nothing appears at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_dir(path: str | Path, write: Callable[[Path], object], keep_existing: bool = False) -> Path:
    """Let `write(tmp_dir)` fill a hidden folder beside `path`, then rename it into place: a reader never
    sees a half-written folder under `path`. An older folder of that name is replaced, unless
    `keep_existing` (caches several processes may fill at once: the first complete folder wins and later
    writers discard theirs, so no reader has files moved away under it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        write(tmp)
        if not path.exists():
            try:
                os.rename(tmp, path)
                return path
            except OSError:
                if not path.exists():
                    raise
        if not keep_existing:
            aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, aside / path.name)
            os.replace(tmp, path)
            shutil.rmtree(aside)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def is_writable_dir(path: Path) -> bool:
    """Whether `path` can be created (if missing) and written to: a probe file, not just permission bits."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
        return True
    except OSError:
        return False


def writable_dir(preferred: str | Path | None, fallback: Path, key: str) -> Path:
    """`preferred` when writable, else `fallback` (a per-user cache: data roots may be read-only); one line
    naming `key` when neither is. Caches of every data family (embeddings, attack profiles, converted
    checkpoints) choose their folder here."""
    fallback = Path(fallback).expanduser()
    if preferred is not None and is_writable_dir(Path(preferred).expanduser()):
        return Path(preferred).expanduser()
    if not is_writable_dir(fallback):
        raise UserError(f"{key}={preferred}: not writable, nor is {fallback}; set {key} to a writable folder")
    if preferred is not None:
        log.info("cache dir %s is not writable; using %s", preferred, fallback)
    return fallback


def require_file(path: str | Path, how_to_get: str) -> Path:
    """`path` as a Path when it is a regular file; otherwise one line saying what is wrong and the fix."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{path} is a directory, but a data file is expected there: {how_to_get}")
    if not path.is_file():
        raise missing_file(path, how_to_get)
    return path


def download(url: str, dest: Path) -> None:
    """Fetch `url` to `dest` through a temporary name, so an interrupted download leaves no bad file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        urllib.request.urlretrieve(url, tmp)
    except (urllib.error.URLError, OSError) as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not download {url} to {dest} ({e}): download it by hand") from e
    tmp.replace(dest)


def ensure_file(path: Path, url: str, download_allowed: bool, key: str = "dataset.download") -> Path:
    """Download a missing file when allowed, else say where to get it (and which switch downloads it)."""
    if path.is_file():
        return path
    if path.is_dir():
        raise UserError(f"{path} is a directory, but a data file is expected there: download it from {url}")
    if not download_allowed:
        raise missing_file(path, f"download it from {url} or set {key}=true")
    download(url, path)
    return path
