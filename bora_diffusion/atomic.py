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
        yield tmp
        tmp.chmod(file_mode())  # after the write: save_file recreates the file 0600 whatever was there
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
