"""Recording: write __mcount_loc, the table of an object's call sites, as the kernel's recordmcount does.

The table has one entry per site, pointing at its call instruction (or at
the nop that replaced it: a nop'd site is still a site): 8 bytes on x86-64
and x32, whose gcc -mrecord-mcount writes `.quad` entries, 4 on i386.
Each entry is relocated by `.rela__mcount_loc` (`.rel__mcount_loc` on i386,
whose addend is the entry itself) with R_X86_64_64 / R_386_32 against its
section's STT_SECTION symbol, as objtool does: a function symbol may be weak and
resolve to another definition after the link. A missing section symbol is
created (append.py).

The sites are the ones the object scanner finds, from the call relocations and
from ftpatch's own nops, and every one is verified first: a site holding neither
its call nor a known nop fails the file and nothing is written. A file that
already has __mcount_loc is left as it is, as recordmcount leaves it.

`__mcount_loc` is SHF_ALLOC, which the kernel needs, and SHF_WRITE: its entries
are absolute addresses, which a PIE or a shared library gets through dynamic
relocations, and the linkers put dynamic relocations in a read-only section only
as text relocations (gcc's own table, SHF_ALLOC alone, makes bfd warn and create
DT_TEXTREL, and lld refuse the link). Writable, the table is data like any
other array of pointers: bfd, gold and lld link it without a word in PIE,
-no-pie, -shared and -static alike.
"""

from __future__ import annotations

import array
from collections.abc import Sequence
from dataclasses import dataclass

from .append import NewSection, SectionSymbols, append, section_symbols
from .archive import is_archive, is_thin_file, members, rebuild
from .elf import (
    ET_REL,
    SHF_ALLOC,
    SHF_GROUP,
    SHF_INFO_LINK,
    SHF_WRITE,
    SHT_GROUP,
    SHT_PROGBITS,
    SHT_REL,
    SHT_RELA,
    ElfFile,
    packed,
    words,
)
from .errors import InputError, VerifyError, naming
from .objects import scan_object
from .sites import DEFAULT_TARGETS, HOOK_TARGETS, ScanResult
from .write import rewrite, rewrite_thin
from .x86 import describe, hexbytes

MCOUNT_LOC = "__mcount_loc"
R_ABSOLUTE = 1  # R_X86_64_64 (x86-64 and x32) and R_386_32 alike: an entry holding the symbol's address plus the addend


@dataclass(frozen=True)
class Recording:
    """What `record` did to one file: an object, or every member of a static archive."""

    path: str
    recorded: int  # sites listed in the tables written
    already: int  # objects left as they were because they have __mcount_loc already
    changed: bool  # a table was written: the file's bytes changed


def record_elf(
    name: str, elf: ElfFile, targets: Sequence[str] = DEFAULT_TARGETS, scanned: ScanResult | None = None
) -> tuple[bytearray | None, int, bool]:
    """(the object with its table appended or None if it stays as it is, sites recorded, whether it had a table).

    `scanned` is the scan of these bytes before a nop or call patched them, whose sites are where they were.
    """
    if elf.e_type != ET_REL:
        raise InputError(
            name,
            f"is a linked file ({elf.type_name}): record writes __mcount_loc into relocatable objects (ET_REL), "
            "before the link, as recordmcount does",
        )
    if elf.section_named(MCOUNT_LOC) is not None:
        return None, 0, True
    result = scan_object(name, elf, targets) if scanned is None else scanned
    verify(result)
    places = _places(result)
    if not places:
        return None, 0, False
    symbols = section_symbols(elf, places)
    # A site in a section group (a C++ inline function or template, COMDAT) gets its entries in a table that
    # joins the group: the linker keeps one copy of a group and discards the others, and an entry outside the
    # group would name a discarded section, which bfd, gold and lld refuse (gcc -mrecord-mcount's table does).
    member_of = _groups(elf)
    by_group: dict[int, dict[int, list[int]]] = {}
    for shndx, starts in places.items():
        by_group.setdefault(member_of.get(shndx, 0), {})[shndx] = starts
    new: list[NewSection] = []
    grown: dict[int, bytes] = {}
    for group, group_places in sorted(by_group.items()):
        at = len(elf.sections) + len(new)  # the index the table takes
        new += _tables(elf, group_places, symbols, at, SHF_GROUP if group else 0)
        if group:
            grown[group] = packed(array.array("I", [at, at + 1]))
    return append(elf, new, symbols, grown), sum(map(len, places.values())), False


def _groups(elf: ElfFile) -> dict[int, int]:
    """Section index -> the SHT_GROUP section whose member it is, for every member of a group."""
    member_of = {}
    for group in elf.sections:
        if group.sh_type == SHT_GROUP:
            # A flag word (GRP_COMDAT), then the members' section indices.
            member_of.update(dict.fromkeys(words(elf.section_data(group), 4)[1:], group.shndx))
    return member_of


def _places(result: ScanResult) -> dict[int, list[int]]:
    """Section index -> the offsets of its sites, each once, ascending; sections in index order.

    Not the sites of the -finstrument-functions hooks: the kernel and uftrace take every entry of
    __mcount_loc for a call of mcount or __fentry__, as gcc -mrecord-mcount writes it.
    A group's sites usually share one section: then its column of offsets is taken whole.
    """
    by_section: dict[int, list[int]] = {}
    for group in result.groups:
        if group.target in HOOK_TARGETS:
            continue
        sections = group.sections
        if sections and sections.count(sections[0]) == len(sections):
            by_section.setdefault(sections[0].shndx, []).extend(group.starts)
        else:
            for section, start in zip(sections, group.starts, strict=True):
                by_section.setdefault(section.shndx, []).append(start)
    return {index: sorted(set(starts)) for index, starts in sorted(by_section.items())}


def verify(result: ScanResult) -> None:
    """Raise VerifyError unless every site holds its call or a known nop, as `nop` and `call` check them.

    Also refused, as `call` refuses them: relocations ftpatch zeroed whose nop is
    gone, each a site that something else overwrote.
    """
    problems = list(result.strays)
    for group in result.groups:
        bad = group.wrong(result.arch)
        if not bad:
            continue
        site = result.site(group, bad[0])
        want = f"{hexbytes(site.call)} or a nop" if site.call else "a nop"
        problems.append(
            f"{site.where}: expected {want}, actual {hexbytes(site.code)} ({describe(site.code, result.arch)})"
            + (f" (and {len(bad) - 1} more sites)" if len(bad) > 1 else "")
        )
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise VerifyError(result.path, problems[0] + more)


def _tables(
    elf: ElfFile, places: dict[int, list[int]], symbols: SectionSymbols, index: int, flags: int
) -> list[NewSection]:
    """A __mcount_loc and its relocation table, for sites at these offsets of these sections; `index`
    is the table's section index, `flags` more sh_flags for both (SHF_GROUP)."""
    arch = elf.arch
    # The relocation entries are the class's words; the table's entries are the machine's (8 bytes on x32,
    # as gcc -mx32 -mrecord-mcount writes them).
    word, shift, entry = arch.word, arch.r_sym_shift, arch.mcount_loc_entry
    code = "Q" if word == 8 else "I"
    count = sum(map(len, places.values()))
    r_offset = array.array(code, range(0, entry * count, entry))
    r_info = array.array(code)
    addends = array.array(code)
    for shndx, starts in places.items():
        r_info += array.array(code, [symbols.index[shndx] << shift | R_ABSOLUTE]) * len(starts)
        addends += array.array(code, starts)
    columns: tuple[array.array[int], ...]
    if arch.rela:
        # The addend is in the entry; the word relocated holds 0, as gas leaves it.
        loc = bytes(entry * count)
        columns, name, sh_type = (r_offset, r_info, addends), f".rela{MCOUNT_LOC}", SHT_RELA
    else:
        # REL: the addend is the word relocated.
        assert entry == word  # i386: R_386_32 relocates a word
        loc = packed(addends)
        columns, name, sh_type = (r_offset, r_info), f".rel{MCOUNT_LOC}", SHT_REL
    rel = array.array(code, bytes(word * len(columns) * count))
    for i, column in enumerate(columns):
        rel[i :: len(columns)] = column
    return [
        NewSection(MCOUNT_LOC, SHT_PROGBITS, SHF_ALLOC | SHF_WRITE | flags, loc, 0, 0, entry, entry),
        NewSection(
            name, sh_type, SHF_INFO_LINK | flags, packed(rel), elf.symtab.shndx, index, word, word * len(columns)
        ),
    ]


def record_data(
    path: str, data: bytes, targets: Sequence[str] = DEFAULT_TARGETS, scanned: Sequence[ScanResult] = ()
) -> tuple[Recording, bytes | bytearray | None]:
    """What recording does to a file's bytes: an ELF object, or each ELF member of a static archive.

    Every member is recorded and verified before the archive is rebuilt, so a
    member that fails leaves the whole archive as it was. `scanned`, if given,
    is scan_data's result for these bytes before a nop or call patched them in
    place: the sites it found are not searched for again.
    """
    if not is_archive(data):
        new, recorded, had = _record_named(path, data, targets, scanned[0] if scanned else None)
        return Recording(path, recorded, int(had), new is not None), new
    replaced: dict[int, bytes | bytearray] = {}
    recorded = already = 0
    for i, member in enumerate(members(path, data)):
        name, held = f"{path}({member.name})", data[member.offset : member.offset + member.size]
        new, count, had = _record_named(name, held, targets, scanned[i] if scanned else None)
        recorded += count
        already += had
        if new is not None:
            replaced[member.offset] = new
    if not replaced:
        return Recording(path, recorded, already, False), None
    return Recording(path, recorded, already, True), rebuild(path, data, replaced)


def _record_named(
    name: str, data: bytes, targets: Sequence[str], scanned: ScanResult | None
) -> tuple[bytearray | None, int, bool]:
    with naming(name):
        return record_elf(name, ElfFile(data), targets, scanned)


def record_file(
    path: str,
    *,
    output: str | None = None,
    targets: Sequence[str] = DEFAULT_TARGETS,
    sync_dir: bool = True,
    fsync: bool = True,
) -> Recording:
    """Record the sites of one object or static archive, atomically; `output=None` replaces `path`.

    Nothing is written unless every site verified. In place, a file left as it
    was is not touched, mtime included. sync_dir, fsync: see write_atomic.
    """
    if is_thin_file(path):  # each member is recorded in its own file
        done = rewrite_thin(path, output, lambda data, name: record_data(name, data, targets), fsync=fsync)
        return Recording(
            path, sum(r.recorded for r in done), sum(r.already for r in done), any(r.changed for r in done)
        )
    return rewrite(path, output, lambda data: record_data(path, data, targets), sync_dir=sync_dir, fsync=fsync)
