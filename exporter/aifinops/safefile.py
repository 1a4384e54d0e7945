"""Reading a file named by the configuration, safely: a regular file, within a size bound.

``Path.read_bytes`` on a FIFO blocks until a writer comes (start-up or a reload hangs, and
then SIGTERM with it); on a symlink to ``/dev/zero`` it reads until memory runs out. Every
file the exporter reads by a configured path (the configuration, the state file, token and
password files) goes through :func:`read_bounded`: opened without blocking, checked to be a
regular file (symlinks are followed: Kubernetes mounts ConfigMaps and Secrets as symlinks),
and read up to its bound.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

MAX_SECRET_BYTES = 64 * 1024
"""A token or password file: a secret is a line, never megabytes."""

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


class UnsafeFileError(OSError):
    """Not a regular file, or over its size bound; ``strerror`` says which."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EINVAL, message)


def file_kind(mode: int) -> str:
    """``"a FIFO"``, ``"a directory"``, ... for a ``st_mode`` that is not a regular file."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_bounded(path: Path, max_bytes: int) -> bytes:
    """The content of ``path``; raises :class:`UnsafeFileError` when it is not a regular file
    or holds more than ``max_bytes``, and ``OSError`` as ``open`` does. Never blocks on a
    FIFO and never reads more than ``max_bytes + 1`` bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFileError(f"{path} is {file_kind(st.st_mode)}, not a regular file")
        if st.st_size > max_bytes:
            raise UnsafeFileError(f"{path} holds {st.st_size} bytes, over the {max_bytes} limit")
        chunks: list[bytes] = []
        size = 0
        while True:  # the size may change between fstat and the reads
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise UnsafeFileError(f"{path} holds over {max_bytes} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_secret_file(path: Path) -> bytes:
    """A token or password file (:data:`MAX_SECRET_BYTES` at most)."""
    return read_bounded(path, MAX_SECRET_BYTES)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` survive a power loss (some file systems cannot fsync a
    directory: then nothing more can be done, and it is not an error)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
