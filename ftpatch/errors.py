"""The errors ftpatch raises.

Every message names the file first and then says what is wrong and where,
so that a command-line front end can print it as one line. The code that
reads bytes (elf.py and the scanners) does not know what file they came
from, and raises with no name; the function that opened the file, or cut the
member out of its archive, names it, with `naming`. This module imports
nothing from the rest of the package, so any module can use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


def printable(text: str) -> str:
    """`text` on one line: names read from a file may hold newlines and other control characters."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class FtpatchError(Exception):
    """Base of every error ftpatch raises on purpose."""

    def __init__(self, path: str, detail: str) -> None:
        path, detail = printable(path), printable(detail)
        super().__init__(f"{path}: {detail}" if path else detail)
        self.path = path
        self.detail = detail

    def __reduce__(self) -> tuple[type[FtpatchError], tuple[str, str]]:
        # Rebuilt from its two parts when it crosses a process boundary (ftpatch -j).
        return type(self), (self.path, self.detail)


class InputError(FtpatchError):
    """The input cannot be read or is not an ELF file ftpatch supports."""


class OutputError(FtpatchError):
    """The output cannot be written."""


class VerifyError(FtpatchError):
    """A site does not hold the bytes or relocation that were expected.

    This is ftrace_bug's EINVAL and EFAULT: nothing has been written.
    """


@contextmanager
def naming(path: str) -> Iterator[None]:
    """Give `path` to every FtpatchError raised inside that names no file yet."""
    try:
        yield
    except FtpatchError as e:
        if e.path:
            raise
        raise type(e)(path, e.detail) from None
