"""Static archives: the ELF members of a GNU `ar` file, where their bytes lie.

Patching never changes a member's size, so the archive's layout, its symbol
index (`/` or `/SYM64/`) and its long-name table (`//`) stay valid as they are;
they are read only to name the members.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError

AR_MAGIC = b"!<arch>\n"
THIN_MAGIC = b"!<thin>\n"
_HEADER = 60


@dataclass(frozen=True)
class Member:
    name: str
    offset: int  # of the member's data in the archive
    size: int


def is_archive(data: bytes) -> bool:
    return data.startswith(AR_MAGIC) or data.startswith(THIN_MAGIC)


def members(path: str, data: bytes) -> list[Member]:
    """Every ELF member of the archive, in archive order."""
    if data.startswith(THIN_MAGIC):
        raise InputError(path, "thin archive: its members live in other files, patch those instead")
    out: list[Member] = []
    names = b""
    pos = len(AR_MAGIC)
    while pos < len(data):
        header = data[pos : pos + _HEADER]
        if len(header) < _HEADER or header[58:60] != b"`\n":
            raise InputError(path, f"bad archive member header at offset {pos:#x}")
        try:
            size = int(header[48:58].decode("ascii").strip() or "0")
        except (UnicodeDecodeError, ValueError):
            raise InputError(path, f"bad member size in the archive header at offset {pos:#x}") from None
        start = pos + _HEADER
        if start + size > len(data):
            raise InputError(path, f"archive member at offset {pos:#x} ({size} bytes) extends past the end of the file")
        raw_name = header[:16].decode("ascii", "backslashreplace").rstrip()
        if raw_name == "//":
            names = data[start : start + size]
        elif raw_name not in ("/", "/SYM64/") and data[start : start + 4] == b"\x7fELF":
            out.append(Member(_member_name(path, raw_name, names, pos), start, size))
        pos = start + size + (size & 1)
    return out


def _member_name(path: str, raw: str, names: bytes, pos: int) -> str:
    if raw.startswith("/") and raw[1:].isdigit():
        index = int(raw[1:])
        end = names.find(b"/\n", index)
        if index >= len(names) or end < 0:
            raise InputError(path, f"archive member at offset {pos:#x} names long name {index}, not in the // table")
        return names[index:end].decode("utf-8", "backslashreplace")
    return raw.removesuffix("/")
