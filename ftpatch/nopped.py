"""How a nop'd object remembers its sites, on disk: what `nop` leaves in a site's relocation entry, and
the pass that finds those sites again.

A nop'd site keeps its entry, made harmless: type NONE and symbol 0, the only
relocation against a profiling call that GNU ld links everywhere (docs/facts.md).
What `call` needs to restore the entry and the bytes exactly, the nop'd object
alone carries:

- x86-64 and x32 (RELA): the entry's r_addend, which bfd, gold and lld ignore in
  a NONE entry, holds a record: "FT" in its top 16 bits, the relocation type, and
  the CRC-32 of the target's name (a name, not an index, since `ld -r` renumbers
  the symbols and keeps the addend). The type gives the form, so the site's
  length. x32's r_addend is 32 bits: there the type is 8 bits and the name's
  CRC-32 its low 8 (RecordLayout), and `nop` refuses a target whose 8 bits another
  target of the object shares, as it refuses on REL what `call` could not restore.
- i386 (REL): an entry has no addend, so the nop's own bytes say which of the
  form's two relocation types the site had (x86.NopStyle's tag), and the length;
  the symbol is the object's one target symbol of the site's kind (an object that
  names two is refused by `nop`, which reads every nop back before writing it),
  unless a --target or --symbol names another: then `call` asks which, and
  `call --target NAME` is told.

An entry zeroed without a record (r_info 0 and r_addend -4 on RELA, an untagged
nop on REL) is no entry this release writes: it is refused, never restored by
a guess.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from .elf import SHT_NOBITS, ElfFile, Relocations
from .relocated import SiteEntries, by_opcode
from .sites import at_entry, slot
from .x86 import CALL_TYPE, PATCHABLE_NOPS, SITE_LENGTH, TAGS, Form, disp_offset, known_nops, nops

RECORD = 0x4654  # "FT": the top 16 bits of the r_addend of an entry ftpatch nop'd
# "FP": the top 16 bits of the r_addend of the NONE entry `call --target` adds next to the call's own at a
# -fpatchable-function-entry site, whose low bits are the id of the compiler's nop (x86.PATCHABLE_NOPS).
PATCHABLE_RECORD = 0x4650
# On REL, which has no addend, where the record of the compiler's nop at a -fpatchable-function-entry site that
# `call --target` filled lies instead: a second entry with r_info 0 (type NONE, symbol 0, which every linker links),
# whose r_offset is this many bytes past the site's first byte, by the nop's id (x86.PATCHABLE_NOPS). Only the
# nops gcc 12 and clang 14 write for i386 (gcc's 90s, clang's 66 90 66 90 90 and 66 90 66 90 66 90) have one, at
# 2 to 4 bytes in: never 1, where the call's own entry is (zeroed by `nop`), and inside the site, whose five or
# more bytes no other site's entry lies in. `ld -r` (bfd, lld) moves a section's entries together, so the distance
# stays; gold's -r drops NONE entries, as it drops a nop'd entry's (docs/facts.md).
REL_PATCHABLE_AT = {1: 2, 3: 3, 9: 4}
# Per form, the relocation types a tag names (tag 1, tag 2) in an i386 object: gcc's first, clang's or
# `as -mrelax-relocations=no`'s second.
# R_386_PC32, R_386_PLT32 (a tail jmp's too); R_386_GOT32X, R_386_GOT32
TAG_TYPES = {Form.REL32: (2, 4), Form.TAIL: (2, 4), Form.GOT_EBX: (43, 3)}


@dataclass(frozen=True)
class RecordLayout:
    """How a record fills an r_addend of `word` bytes: RECORD, then the type, then the name's hash."""

    word: int

    @property
    def hash_bits(self) -> int:
        return 32 if self.word == 8 else 8

    @property
    def type_bits(self) -> int:
        return 8 * self.word - 16 - self.hash_bits

    def name_hash(self, name: str) -> int:
        return zlib.crc32(name.encode()) & ((1 << self.hash_bits) - 1)

    def record(self, r_type: int, name: str) -> int:
        """The r_addend of a nop'd entry: what restores it, the -4 of every call relocation aside."""
        return (RECORD << self.type_bits | r_type) << self.hash_bits | self.name_hash(name)

    def is_record(self, r_addend: int) -> bool:
        return r_addend >> (8 * self.word - 16) == RECORD

    def split(self, value: int) -> tuple[int, int]:
        """(relocation type, name hash) of a record."""
        return value >> self.hash_bits & ((1 << self.type_bits) - 1), value & ((1 << self.hash_bits) - 1)


def records(elf: ElfFile) -> RecordLayout:
    return RecordLayout(elf.arch.word)


def nop_entry(elf: ElfFile, r_type: int, name: str) -> bytes:
    """What a nop'd site's entry holds after r_offset: r_info 0, and on RELA the record."""
    word = elf.arch.word
    return bytes(word) + (records(elf).record(r_type, name).to_bytes(word, "little") if elf.arch.rela else b"")


def tag(elf: ElfFile, form: Form, r_type: int) -> int:
    """What an i386 object's nop says of its entry's relocation type; 0 on RELA, whose record says it."""
    return 1 + TAG_TYPES[form].index(r_type) if not elf.arch.rela else 0


def nop_id(nop: bytes) -> int:
    """The id of a compiler's nop at a -fpatchable-function-entry site (x86.PATCHABLE_NOPS)."""
    return next(i for i, code in PATCHABLE_NOPS.items() if code == nop)


def patchable_record(nop: bytes, word: int) -> int:
    """The r_addend (of `word` bytes) of the NONE entry that keeps the compiler's nop at a
    -fpatchable-function-entry site: "FP" in its top 16 bits, the nop's id in its low 16."""
    return PATCHABLE_RECORD << (8 * word - 16) | nop_id(nop)


def patchable_records(
    elf: ElfFile, entries: Relocations, sites: Collection[tuple[int, int]]
) -> tuple[dict[tuple[int, int], bytes], frozenset[int]]:
    """(section index, r_offset of the call's entry) -> the compiler's nop, at each of the -fpatchable-function-entry
    `sites` (section index, offset) a record names; and on REL the positions of the entries that are records."""
    if not sites or 0 not in entries.r_info:
        return {}, frozenset()
    found = {}
    if not elf.arch.rela:
        zeroed = {(entries.section(i).shndx, entries.r_offset[i]): i for i in entries.holding(0)}
        records: set[int] = set()
        for shndx, site in sites:
            named = [
                (ident, zeroed[shndx, site + at])
                for ident, at in REL_PATCHABLE_AT.items()
                if (shndx, site + at) in zeroed
            ]
            if len(named) > 1:
                where = elf.sections[shndx].where(site)
                raise elf.fail(
                    f"{where}: {len(named)} entries with r_info 0 lie where a record of the compiler's nop would "
                    f"(relocations {', '.join(entries.name(i) for _, i in named)}), which `call --target` never writes"
                )
            if named:
                found[shndx, site + 1] = PATCHABLE_NOPS[named[0][0]]
                records.add(named[0][1])
        return found, frozenset(records)
    top = 8 * elf.arch.word - 16
    for i in entries.holding(0):
        addend = entries.r_addend[i]
        if addend >> top == PATCHABLE_RECORD and (nop := PATCHABLE_NOPS.get(addend & 0xFFFF)) is not None:
            found[entries.section(i).shndx, entries.r_offset[i]] = nop
    return found, frozenset()


# What `call` cannot restore, each said once: (section index, where the entry's displacement ends) -> why.
Strays = dict[tuple[int, int], str]


def nopped(
    elf: ElfFile,
    entries: Relocations,
    targets: Mapping[int, str],
    filled: Collection[tuple[int, int]] = (),
    records: Collection[int] = (),
) -> tuple[list[SiteEntries], Strays]:
    """The sites whose zeroed entry says what they were, and a sentence for each zeroed entry that
    looks like a nop'd site but cannot be restored exactly. On REL, `filled`: (section index, r_offset) of the
    call entries at -fpatchable-function-entry sites a record names (patchable_records), whose zeroed entry is
    R_386_PC32, the call `call --target` adds, against the one target of an entry's kind; `records`: the
    positions of those records, which are no nop'd sites."""
    if 0 not in entries.r_info:
        return [], {}
    zeroed = entries.holding(0)
    if elf.arch.rela:
        return _recorded(elf, entries, zeroed, targets)
    return _tagged(elf, entries, [i for i in zeroed if i not in records], targets, filled)


def _recorded(
    elf: ElfFile, entries: Relocations, zeroed: Sequence[int], targets: Mapping[int, str]
) -> tuple[list[SiteEntries], Strays]:
    arch, layout = elf.arch, records(elf)
    by_record: dict[int, list[int]] = {}
    unrecorded = []
    for i in zeroed:
        if layout.is_record(entries.r_addend[i]):
            by_record.setdefault(entries.r_addend[i], []).append(i)
        elif entries.r_addend[i] == arch.call_addend(Form.REL32) and entries.section(i).sh_type != SHT_NOBITS:
            unrecorded.append(i)
    hashes: dict[int, list[int]] = {}
    for symbol, name in targets.items():
        hashes.setdefault(layout.name_hash(name), []).append(symbol)
    found: list[SiteEntries] = []
    strays: Strays = {}
    for value, positions in by_record.items():
        (r_type, wanted), i = layout.split(value), positions[0]
        form = arch.call_forms.get(r_type)
        symbols = hashes.get(wanted, [])
        if form is None or len(symbols) != 1:
            why = (
                f"its record names {arch.reloc_name(r_type)}, which is no call"
                if form is None
                else "its record names a symbol that is not one of the targets (was it nop'd with a --symbol?)"
                if not symbols
                else f"its record's {layout.hash_bits} bits of a name's hash ({wanted:#04x}) fit more than one "
                f"target: {', '.join(sorted(targets[s] for s in symbols))}"
            )
            strays[_end(entries, i)] = f"{_where(entries, i)}: relocation {entries.name(i)} was nop'd, but {why}"
            continue
        held = bytes(arch.word) + value.to_bytes(arch.word, "little", signed=True)
        found += [
            SiteEntries(at, f, symbols[0], r_type, held) for f, at in by_opcode(elf, entries, positions, form).items()
        ]
    for i in unrecorded:
        nop = _nop_ending_at(elf, entries, i)
        strays[_end(entries, i)] = (
            f"{_where(entries, i)}: relocation {entries.name(i)} has r_info 0 and addend -4, "
            + (
                f"and {nop.hex(':')} ends at its displacement: a site nop'd without the record every nop of this "
                "ftpatch writes, which `call` cannot restore exactly; rebuild the object"
                if nop
                else "but no known nop ends at its displacement"
            )
        )
    return found, strays


def _tagged(
    elf: ElfFile,
    entries: Relocations,
    zeroed: Sequence[int],
    targets: Mapping[int, str],
    filled: Collection[tuple[int, int]],
) -> tuple[list[SiteEntries], Strays]:
    """One SiteEntries per form, type and symbol, from the tags of the nops over zeroed REL entries, and from
    the records of the -fpatchable-function-entry sites `call --target` filled (nopped)."""
    arch, data, known = elf.arch, elf.data, known_nops(elf.arch)
    by_call: dict[tuple[Form, int, tuple[int, ...]], list[int]] = {}
    strays: Strays = {}
    for i in zeroed:
        sec, r_offset = entries.section(i), entries.r_offset[i]
        if (sec.shndx, r_offset) in filled:
            # The compiler's nop is back, untagged; the record says the call was the one `call --target` writes.
            kind = _of_kind(targets, True, 0)
            if not kind:
                strays[_end(entries, i)] = (
                    f"{_where(entries, i)}: relocation {entries.name(i)} was nop'd, but no target symbol is of its "
                    "kind (was it nop'd with a --symbol?)"
                )
            else:
                by_call.setdefault((Form.REL32, CALL_TYPE[False], tuple(kind)), []).append(i)
            continue
        end = sec.sh_offset + r_offset + 4
        ending = [
            (form, code)
            for form in (Form.REL32, arch.pic_form)
            if sec.sh_type != SHT_NOBITS
            and disp_offset(form) <= r_offset
            and r_offset + 4 <= sec.sh_size
            and (code := data[end - SITE_LENGTH[form] : end]) in known
        ]
        tagged = [(form, known[code]) for form, code in ending if known[code].tag in TAGS]
        if not tagged:
            if ending:
                strays[_end(entries, i)] = (
                    f"{_where(entries, i)}: relocation {entries.name(i)} has r_info 0, and the untagged nop "
                    f"{ending[0][1].hex(':')} ends at its displacement: a site nop'd without the tag every nop of "
                    "this ftpatch writes, which `call` cannot restore exactly; rebuild the object"
                )
            continue
        (form, nop), *more = tagged
        form = nop.form if nop.form is Form.TAIL else form
        kind = _of_kind(targets, nop.entry, nop.slot)
        if more or not kind:
            why = "a 5-byte and a 6-byte tagged nop end there" if more else "no target symbol is of its kind"
            strays[_end(entries, i)] = f"{_where(entries, i)}: relocation {entries.name(i)} was nop'd, but {why}"
            continue
        by_call.setdefault((form, TAG_TYPES[form][nop.tag - 1], tuple(kind)), []).append(i)
    found = []
    for (form, r_type, symbols), positions in by_call.items():
        # More than one: a --target or --symbol named another, and the nop names none; `call --target` says.
        doubt = (
            f"the nop could have replaced a call to any of {', '.join(targets[s] for s in symbols)}: say which "
            "with `call --target NAME`"
            if len(symbols) > 1
            else ""
        )
        found.append(SiteEntries(positions, form, symbols[0], r_type, bytes(arch.word), doubt))
    return found, strays


def _of_kind(targets: Mapping[int, str], entry: bool | None, nop_slot: int) -> list[int]:
    """The target symbols a REL nop written at a function's entry (True), inside one (False) or at either
    (None), saying slot `nop_slot`, can have replaced a call to: those whose name says that place and slot, or
    says none (a --target)."""
    return [
        s
        for s, name in targets.items()
        if at_entry(name) is None or ((entry is None or at_entry(name) == entry) and slot(name) == nop_slot)
    ]


def record_clash(elf: ElfFile, targets: Mapping[int, str], target: str | None) -> str:
    """Why the record of a site of `target` nop'd in this object would not name it alone among the
    object's targets, whatever the nop ('' if it would): x32's record keeps 8 bits of a name's CRC-32."""
    if not elf.arch.rela or target is None:
        return ""
    layout = records(elf)
    mine = layout.name_hash(target)
    others = sorted({name for name in targets.values() if name != target and layout.name_hash(name) == mine})
    if not others:
        return ""
    room = f"{elf.arch.name}'s {8 * elf.arch.word}-bit r_addend"
    return (
        f"the record a nop'd entry keeps in {room} holds {layout.hash_bits} bits of the target's name hash, and "
        f"{target} and {', '.join(others)} have the same {layout.hash_bits} ({mine:#04x}): `call` could not tell "
        "which of them the site called"
    )


def restorable(
    elf: ElfFile, targets: Mapping[int, str], target: str | None, new: bytes, recorded: bool = False
) -> bool:
    """Whether `call` would restore a site of `target` exactly were `new` written over it: on RELA the
    record says all, if its hash names one target alone (x32's 8 bits may not); on REL the nop must name
    the type, or a record of a -fpatchable-function-entry site say it (`recorded`), and the symbol be the one
    of its kind."""
    if target is None:
        return True
    if elf.arch.rela:
        layout = records(elf)
        return [layout.name_hash(name) for name in targets.values()].count(layout.name_hash(target)) == 1
    if recorded:
        kind = [targets[s] for s in _of_kind(targets, True, 0)]
        return kind == [target] or (target in kind and any(at_entry(name) is None for name in kind))
    nop = known_nops(elf.arch).get(new)
    if nop is None or nop.tag not in TAGS:
        return False
    kind = [targets[s] for s in _of_kind(targets, nop.entry, nop.slot)]
    # Where a --target or --symbol makes it one of several, `call` asks which (SiteGroup.doubt): no guess either way.
    return kind == [target] or (target in kind and any(at_entry(name) is None for name in kind))


def _nop_ending_at(elf: ElfFile, entries: Relocations, i: int) -> bytes:
    """The known nop of a call form that ends where entry i's displacement ends, if any."""
    sec, r_offset = entries.section(i), entries.r_offset[i]
    end = sec.sh_offset + r_offset + 4
    for form in (Form.REL32, elf.arch.pic_form):
        length = SITE_LENGTH[form]
        if disp_offset(form) <= r_offset and r_offset + 4 <= sec.sh_size:
            code = elf.data[end - length : end]
            if code in nops(length, elf.arch):
                return code
    return b""


def _end(entries: Relocations, i: int) -> tuple[int, int]:
    return entries.section(i).shndx, entries.r_offset[i] + 4


def _where(entries: Relocations, i: int) -> str:
    return entries.section(i).where(entries.r_offset[i])
