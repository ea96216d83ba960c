"""Writing: put new bytes at a path atomically, or not at all.

The bytes go to a hidden temporary file in the target's directory, which is
fsynced and then renamed over the target with os.replace, so a reader sees
the old file or the new one and never a mix. Every error and every
interruption that Python sees removes the temporary.
"""

from __future__ import annotations

import os
import secrets

from .errors import OutputError


def write_atomic(target: str, data: bytes, mode: int) -> None:
    """Replace (or create) `target` with `data` and permission bits `mode`, atomically."""
    directory = os.path.dirname(os.path.abspath(target))
    temp = os.path.join(directory, f".{os.path.basename(target)}.ftpatch-{secrets.token_hex(4)}")
    created = False
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        created = True
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, target)
        created = False
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise OutputError(target, f"{(e.strerror or str(e)).lower()}, writing") from None
    finally:
        if created:
            os.unlink(temp)
