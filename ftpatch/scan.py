"""Scanning: the profiling call sites of an ELF file or a static archive.

An object's sites are found through its relocations (objects.py), a linked
file's through its call targets (linked.py); both give a ScanResult (sites.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from .archive import is_archive, is_thin, members, read_thin
from .elf import ET_REL, ElfFile
from .errors import naming
from .objects import scan_object
from .read import read_input
from .sites import DEFAULT_TARGETS, ScanResult


def scan_elf(name: str, elf: ElfFile, targets: Iterable[str] = DEFAULT_TARGETS, base: int = 0) -> ScanResult:
    """The sites of one ELF image, in a result named `name`; errors say their file's name where it is read."""
    if elf.e_type == ET_REL:
        return scan_object(name, elf, targets, base)
    from .linked import scan_linked  # here: an object (a per-object build rule) never pays its import

    return scan_linked(name, elf, targets)


def scan(path: str, targets: Iterable[str] = DEFAULT_TARGETS) -> ScanResult:
    """Every profiling call site of the ELF file at `path`, in file order."""
    return _scan_named(path, read_input(path), targets)


def scan_data(path: str, data: bytes, targets: Iterable[str] = DEFAULT_TARGETS) -> list[ScanResult]:
    """One result for an ELF file, or one per ELF member of a static archive, named `lib.a(member.o)`."""
    if not is_archive(data):
        return [_scan_named(path, data, targets)]
    if is_thin(data):
        return [_scan_named(f"{path}({m.name})", held, targets) for m, _file, held in read_thin(path, data)]
    return [
        _scan_named(f"{path}({m.name})", data[m.offset : m.offset + m.size], targets, m.offset)
        for m in members(path, data)
    ]


def _scan_named(name: str, data: bytes, targets: Iterable[str], base: int = 0) -> ScanResult:
    with naming(name):
        return scan_elf(name, ElfFile(data), targets, base)


def scan_path(path: str, targets: Iterable[str] = DEFAULT_TARGETS) -> list[ScanResult]:
    return scan_data(path, read_input(path), targets)
