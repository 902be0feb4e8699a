"""Atomic file writes: write beside the target, then rename, so a crash never leaves a half-written output."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces `path` in one rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o644)  # mkstemp creates 0600; outputs are ordinary files others may read
    try:
        try:
            yield tmp
        except Exception as error:
            if is_disk_full(error):
                raise disk_full_error(target, error) from None
            raise
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: str | os.PathLike, *, folder: bool, what: str = "output") -> None:
    """Raise a one-line ConfigError if `path` cannot become the output `folder` (or file) asked for.

    Run before any model loads, so a mistyped --out costs nothing. Checks: a file where a folder is expected
    and the reverse, and a read-only place (the nearest existing ancestor is where new entries would be made).
    """
    from .errors import ConfigError

    target = Path(path)
    if folder and target.exists() and not target.is_dir():
        raise ConfigError(f"{what} {target} is an existing file, not a folder: choose a folder path")
    if not folder and target.is_dir():
        raise ConfigError(f"{what} {target} is a folder: give a file path, such as {target / 'out'}")
    place = _nearest_existing(target if folder else target.parent)
    if place != target and not place.is_dir():
        raise ConfigError(
            f"{what} {target}: {place} is a file, so nothing can be made under it: choose another path"
        )
    if not os.access(place, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise ConfigError(
            f"{what} {target}: {place} is not writable: choose another path, or make it writable"
        )


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` is a full disk: OSError ENOSPC or EDQUOT, or safetensors' SafetensorError (which carries
    the OS message as text only)."""
    import errno

    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(error) or "Disk quota exceeded" in str(error)


def disk_full_error(path: str | os.PathLike, error: BaseException):
    """The ConfigError to raise for a full disk while writing `path` (nothing partial is left by our writers)."""
    from .errors import ConfigError

    return ConfigError(
        f"{path}: the disk is full ({error.__class__.__name__}); free some space and run again"
    )


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary sibling folder; on success it replaces `path` (removed first if it exists).

    On any failure the temporary folder is removed, so a full disk never leaves half a pipeline behind.
    """
    import shutil

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp creates 0700; outputs are ordinary folders others may read
    try:
        try:
            yield tmp
        except Exception as error:
            if is_disk_full(error):
                raise disk_full_error(target, error) from None
            raise
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
