"""`call --target NAME`: what an object must gain before its sites can call NAME.

A relocation names its function by symbol index, so an object whose sites are
to call NAME needs a symbol of that name: when it has none, NAME is added as an
undefined global at the end of .symtab (append.with_undefined), and the object
is scanned again, so that the plan is made of the bytes that are written. A
linked file gains nothing: NAME must be one it defines or already reaches.
"""

from __future__ import annotations

from collections.abc import Sequence

from .append import with_undefined
from .archive import is_archive, rebuild
from .elf import ElfFile
from .errors import naming
from .sites import ScanResult, chosen


def with_symbol(
    path: str, data: bytes, scanned: Sequence[ScanResult], name: str, only: Sequence[str], exclude: Sequence[str]
) -> bytes | None:
    """The file's bytes with a symbol `name` added to each object (or archive member) that has a site to
    point at it and no symbol of that name; None if none needs one."""
    grown: dict[int, bytes] = {}
    for result in scanned:
        if result.type != "ET_REL" or not _chooses(result, only, exclude):
            continue
        with naming(result.path):
            elf = ElfFile(result.data)
            if not elf.symbols.named([name]):
                grown[result.base] = bytes(with_undefined(elf, name))
    if not grown:
        return None
    if not is_archive(data):
        return grown[0]
    return rebuild(path, data, grown)


def _chooses(result: ScanResult, only: Sequence[str], exclude: Sequence[str]) -> bool:
    """Whether --only / --except leave any of the file's sites to point elsewhere."""
    return any(
        chosen(result.function_at(section, start), only, exclude)
        for group in result.groups
        for section, start in zip(group.sections, group.starts, strict=True)
    )
