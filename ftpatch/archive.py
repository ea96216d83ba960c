"""Static archives: the ELF members of a GNU `ar` file, where their bytes lie, and the archive rebuilt around new members.

A thin archive (`ar --thin`, `ar rcT`: the kernel's built-in.a) holds only the headers of its members,
whose bytes stay in the files the long-name table names, relative to the archive's directory; the symbol
index names a member by its header's offset, which no change of a member's size moves. Its members are
patched where they lie, and a header's size written again when record makes a member longer.

Patching never changes a member's size, so the archive's layout, its symbol
index (`/` or `/SYM64/`) and its long-name table (`//`) stay valid as they are;
they are read only to name the members. Recording makes members longer: then
`rebuild` writes each member header's size again and moves the members, and the
symbol index, which names each member by its header's offset in the archive,
follows. The long-name table names members by offsets into itself, so it stays.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from .errors import InputError
from .read import open_input, read_input

AR_MAGIC = b"!<arch>\n"
THIN_MAGIC = b"!<thin>\n"
_HEADER = 60

# The symbol index, by its name: the width of its big-endian words (a count, then a member offset per symbol).
_INDEXES = {"/": 4, "/SYM64/": 8}


@dataclass(frozen=True)
class Member:
    name: str
    offset: int  # of the member's data in the archive; of its header in a thin archive
    size: int


def is_archive(data: bytes) -> bool:
    return data.startswith(AR_MAGIC) or data.startswith(THIN_MAGIC)


def is_thin(data: bytes) -> bool:
    return data.startswith(THIN_MAGIC)


def _entries(path: str, data: bytes) -> Iterator[tuple[int, str, int]]:
    """(header offset, raw name, size) of every entry of the archive, special ones included, in order."""
    thin = is_thin(data)
    pos = len(AR_MAGIC)
    while pos < len(data):
        header = data[pos : pos + _HEADER]
        if len(header) < _HEADER or header[58:60] != b"`\n":
            raise InputError(path, f"bad archive member header at offset {pos:#x}")
        try:
            size = int(header[48:58].decode("ascii").strip() or "0")
        except (UnicodeDecodeError, ValueError):
            raise InputError(path, f"bad member size in the archive header at offset {pos:#x}") from None
        raw_name = header[:16].decode("ascii", "backslashreplace").rstrip()
        # A thin archive keeps the bytes of its symbol index and long-name table, and of no member.
        held = size if not thin or raw_name in (*_INDEXES, "//") else 0
        if pos + _HEADER + held > len(data):
            raise InputError(path, f"archive member at offset {pos:#x} ({size} bytes) extends past the end of the file")
        yield pos, raw_name, size
        pos += _HEADER + held + (held & 1)


def members(path: str, data: bytes) -> list[Member]:
    """Every ELF member of the archive, in archive order."""
    if is_thin(data):
        raise InputError(path, "is a thin archive: its members live in the files it names, read them with read_thin")
    out: list[Member] = []
    names = b""
    for pos, raw_name, size in _entries(path, data):
        start = pos + _HEADER
        if raw_name == "//":
            names = data[start : start + size]
        elif raw_name not in _INDEXES and data[start : start + 4] == b"\x7fELF":
            out.append(Member(_member_name(path, raw_name, names, pos), start, size))
    return out


def thin_members(path: str, data: bytes) -> list[tuple[Member, str]]:
    """Every member of a thin archive, in archive order, and the file that holds it: its name in the
    long-name table, relative to the archive's directory unless absolute."""
    out: list[tuple[Member, str]] = []
    names = b""
    directory = os.path.dirname(path)
    for pos, raw_name, size in _entries(path, data):
        if raw_name == "//":
            names = data[pos + _HEADER : pos + _HEADER + size]
        elif raw_name not in _INDEXES:
            name = _member_name(path, raw_name, names, pos)
            out.append((Member(name, pos, size), os.path.join(directory, name)))
    return out


def read_thin(path: str, data: bytes) -> list[tuple[Member, str, bytes]]:
    """Each ELF member of a thin archive, the file that holds it, and its bytes, read there."""
    found = []
    for member, file in thin_members(path, data):
        held = read_input(file)
        if len(held) != member.size:
            raise InputError(
                path,
                f"member {member.name} is {len(held)} bytes in {file}, and {member.size} in the archive's header: "
                "the file changed since the archive was made, make it again (ar rcT)",
            )
        if held[:4] == b"\x7fELF":
            found.append((member, file, held))
    return found


def is_thin_file(path: str) -> bool:
    """Whether the file at `path` is a thin archive; False where it cannot be read, which reading it will say."""
    try:
        fd = open_input(path)
    except InputError:
        return False
    try:
        return is_thin(os.pread(fd, len(THIN_MAGIC), 0))
    except OSError:
        return False
    finally:
        os.close(fd)


def resized_thin(path: str, data: bytes, sizes: Mapping[int, int]) -> bytes:
    """The thin archive with the member whose header starts at each offset of `sizes` given that size.

    Only the headers' size fields change: a thin archive holds no member's bytes, so no header moves and
    the symbol index stays as it is.
    """
    out = bytearray(data)
    for pos, size in sizes.items():
        if size > 9_999_999_999:
            raise InputError(path, f"member at offset {pos:#x} would be {size} bytes, more than ar's size field holds")
        out[pos + 48 : pos + 58] = str(size).encode().ljust(10)
    return bytes(out)


def rebuild(path: str, data: bytes, replaced: Mapping[int, bytes | bytearray]) -> bytes:
    """The archive with the member whose data starts at each offset of `replaced` given those bytes.

    Every other byte of every header and member is kept; sizes, the padding
    that keeps each header at an even offset, and the symbol index's offsets
    are made again.
    """
    pieces: list[bytes | bytearray] = [AR_MAGIC]
    moved: dict[int, int] = {}  # old header offset -> new header offset
    indexes: list[tuple[int, int, int]] = []  # (piece holding a symbol index's data, its word size, its size)
    at = len(AR_MAGIC)
    for pos, raw_name, size in _entries(path, data):
        start = pos + _HEADER
        body = replaced.get(start, data[start : start + size])
        if len(body) > 9_999_999_999:
            raise InputError(
                path, f"member at offset {pos:#x} would be {len(body)} bytes, more than ar's size field holds"
            )
        moved[pos] = at
        header = data[pos : pos + 48] + str(len(body)).encode().ljust(10) + b"`\n"
        if raw_name in _INDEXES:
            indexes.append((len(pieces) + 1, _INDEXES[raw_name], size))
        pieces += [header, body, b"\n" * (len(body) & 1)]
        at += _HEADER + len(body) + (len(body) & 1)
    for piece, width, size in indexes:
        pieces[piece] = _moved_index(path, bytes(pieces[piece]), width, size, moved)
    return b"".join(pieces)


def _moved_index(path: str, index: bytes, width: int, size: int, moved: Mapping[int, int]) -> bytes:
    count = int.from_bytes(index[:width], "big")
    if width * (count + 1) > size:
        raise InputError(path, f"the archive's symbol index lists {count} symbols but is {size} bytes")
    offsets = [int.from_bytes(index[width * (i + 1) : width * (i + 2)], "big") for i in range(count)]
    missing = next((o for o in offsets if o not in moved), None)
    if missing is not None:
        raise InputError(path, f"the archive's symbol index names a member at offset {missing:#x}, where none starts")
    new = [moved[o] for o in offsets]
    if max(new, default=0) >= 1 << (8 * width):
        raise InputError(path, "the rebuilt archive would be too large for its 32-bit symbol index (/)")
    return index[:width] + b"".join(o.to_bytes(width, "big") for o in new) + index[width * (count + 1) :]


def _member_name(path: str, raw: str, names: bytes, pos: int) -> str:
    if raw.startswith("/") and raw[1:].isdigit():
        index = int(raw[1:])
        end = names.find(b"/\n", index)
        if index >= len(names) or end < 0:
            raise InputError(path, f"archive member at offset {pos:#x} names long name {index}, not in the // table")
        return names[index:end].decode("utf-8", "backslashreplace")
    return raw.removesuffix("/")
