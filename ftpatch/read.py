"""Reading: the bytes of an input file, refusing what is not a regular file.

The counterpart of write.py: every input ftpatch opens (a file, a thin
archive's member file, the input it replaces in place) is opened here.
"""

from __future__ import annotations

import os
import stat

from .errors import InputError


def open_input(path: str) -> int:
    """A read-only descriptor on the regular file at `path`.

    The open is non-blocking and the type is checked on the descriptor itself
    (fstat), so a FIFO never blocks and a path swapped after a stat is no race.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except PermissionError:
        raise InputError(path, "permission denied, reading") from None
    except OSError as e:
        raise InputError(path, f"{(e.strerror or str(e)).lower()}, reading") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InputError(path, "is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise InputError(path, "not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_fd(path: str, fd: int) -> bytes:
    """All the bytes of the open regular file `fd`, from its start."""
    try:
        size = os.fstat(fd).st_size
        chunks: list[bytes] = []
        offset = 0
        while True:
            chunk = os.pread(fd, max(size - offset, 1 << 16), offset)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            offset += len(chunk)
    except OSError as e:
        raise InputError(path, f"{(e.strerror or str(e)).lower()}, reading") from None


def read_input(path: str) -> bytes:
    """The whole file, refusing anything that is not a regular file."""
    fd = open_input(path)
    try:
        return read_fd(path, fd)
    finally:
        os.close(fd)
