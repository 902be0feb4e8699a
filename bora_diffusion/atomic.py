"""Atomic file writes: write beside the target, then rename, so a crash never leaves a half-written output.

Outputs are ordinary files that other users' tools (an A1111 or ComfyUI server) may need to read, so they get the
modes a plain `open()` / `mkdir` would give them under the process umask: files 0o666 & ~umask, folders
0o777 & ~umask. `tempfile` (0600 / 0700) and safetensors' `save_file` (0600, even over an existing file) do not.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def umask() -> int:
    """The process umask, read without changing it where the OS says it (Linux); else set and restored at once."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~umask()


def dir_mode() -> int:
    return 0o777 & ~umask()


def _stats(root: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime in ns) of `root` and everything under it; empty when it does not exist."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in [".", *dirs, *files]:
            path = os.path.normpath(os.path.join(folder, name))
            with contextlib.suppress(OSError):
                info = os.stat(path, follow_symlinks=False)
                found[path] = (info.st_ino, info.st_mtime_ns)
    return found


@contextlib.contextmanager
def written_with_umask(folder: str | os.PathLike) -> Iterator[Path]:
    """Around a writer that leaves 0600 files (safetensors inside `save_pretrained`): afterwards give what it
    created or rewrote under `folder` the modes the umask allows. Only that: the folder a user names may already
    hold their own files (a private key kept 0600), whose modes are theirs."""
    root = Path(folder)
    before = _stats(root)
    yield root
    for path, stamp in _stats(root).items():
        if os.path.islink(path):
            continue  # chmod would follow the link out of the folder
        if os.path.isdir(path):
            if (
                path not in before
            ):  # a folder that was there keeps its mode, though new files changed its mtime
                os.chmod(path, dir_mode())
        elif before.get(path) != stamp:
            os.chmod(path, file_mode())


def temp_dir(parent: str | os.PathLike, prefix: str = ".tmp-") -> Path:
    """A new empty folder in `parent` (to be renamed into place), with the umask's folder mode, not mkdtemp's 0700."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    folder.chmod(dir_mode())
    return folder


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces `path` in one rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            yield tmp
        except Exception as error:
            if is_disk_full(error):
                raise disk_full_error(target, error) from None
            raise
        tmp.chmod(file_mode())  # after the write: save_file recreates the file 0600 whatever was there
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


def check_pipeline_folder(path: str | os.PathLike, what: str = "--save") -> None:
    """Raise a one-line ConfigError unless `path` can take a saved pipeline: a new or empty folder, or an earlier
    save (a diffusers folder, with model_index.json), which is replaced whole. Any other folder is refused, since
    replacing it would delete the user's files and writing into it would mix theirs with the pipeline's."""
    from .errors import ConfigError

    check_writable(path, folder=True, what=what)
    target = Path(path)
    if target.is_dir() and any(target.iterdir()) and not (target / "model_index.json").is_file():
        raise ConfigError(
            f"{what} {target} holds other files and is not a saved pipeline (no model_index.json): "
            "choose a new or empty folder"
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
    tmp = temp_dir(target.parent, prefix=f".{target.name}.")
    try:
        try:
            with written_with_umask(tmp):  # all of it is new: the umask's modes, not save_file's 0600
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
