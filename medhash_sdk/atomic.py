"""Atomic file writes: nothing a crash or SIGKILL can leave half-written.

Every file the SDK writes (indexes, shards, manifests, engines, PNGs) goes through here: a
temporary file in the target's folder, fsynced, renamed over the target (os.replace is atomic
on POSIX), then the folder fsynced so the rename itself survives a power cut.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
from typing import IO, Any, Iterator


def fsync_dir(folder: str) -> None:
    """fsync a folder so a rename inside it is durable (a no-op where folders can't be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _create_temporary(folder: str, name: str) -> str:
    """An empty new file `.name.XXXX.tmp` in `folder`, created 0644 minus the process umask.

    os.open applies the umask itself, so the umask is never read by changing it (os.umask is
    process-wide: swapping it would race with every other thread creating files).
    """
    for _ in range(100):
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {os.path.join(folder, name)}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temporary path beside `path` for a writer that takes a path; publish it on success.

    The new file keeps the permissions of the file it replaces (0644 minus the umask for a new
    one). On any exception the temporary file is removed and `path` is left as it was.
    """
    target = os.path.abspath(os.fspath(path))
    if os.path.isdir(target):  # refused before anything is written (os.replace would fail at the end)
        raise IsADirectoryError(errno.EISDIR, "a folder, not a file: name a file inside it", os.fspath(path))
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    tmp = _create_temporary(folder, os.path.basename(target))
    try:
        try:   # a replaced file keeps its permissions; a new one gets 0644 minus the umask (os.open)
            os.chmod(tmp, os.stat(target).st_mode & 0o777)
        except FileNotFoundError:
            pass
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` for writing; on success it replaces `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_open(path) as f:
        f.write(data)
