"""Objects: find the profiling call sites of a relocatable object through its relocations.

A site is live when a relocation against a target symbol (mcount, _mcount,
__fentry__ or a --symbol) applies to it. A nop'd site keeps its entry, made
harmless: type NONE and symbol 0, the only relocation against a profiling call
that GNU ld links everywhere (FACTS.md). What `call` needs to restore the entry
and the bytes exactly, the nop'd object alone carries:

- x86-64 (RELA): the entry's r_addend, which bfd, gold and lld ignore in a NONE
  entry, holds a record: "FT" in its top 16 bits, the relocation type, and the
  CRC-32 of the target's name (a name, not an index, since `ld -r` renumbers the
  symbols and keeps the addend). The type gives the form, so the site's length.
- i386 (REL): an entry has no addend, so the nop's own bytes say which of the
  form's two relocation types the site had (x86.NopStyle's tag), and the length;
  the symbol is the object's one target symbol of the site's kind (an object that
  names two is refused by `nop`, which reads every nop back before writing it).

Entries nop'd before records existed (r_info 0, r_addend -4 on RELA, an
untagged nop on REL) are found again by the rule they were written with
(README, "Objects nop'd before 0.2"): the nop that ends where the displacement
ends, the function's decoding where a 5- and a 6-byte nop both fit, the file's
one target symbol or the live sites', and the live sites' type or gcc's.

Speed: the relocation tables are decoded together, as columns of one array,
and sites are kept as SiteGroups, columns again; a Site object costs more to
make (a microsecond) than finding its site does. On an object of 20,000 sites
the scan takes about 15 ms.
"""

from __future__ import annotations

import bisect
import re
import zlib
from collections.abc import Iterable, Sequence
from functools import cache, partial
from operator import itemgetter

from .demangle import demangle
from .elf import SHT_NOBITS, SHT_REL, SHT_RELA, ElfFile, Relocations, Section
from .errors import FtpatchError, InputError, VerifyError
from .sites import ScanResult, SiteGroup, at_entry
from .x86 import (
    I386,
    SITE_LENGTH,
    TAGS,
    X86_64,
    Arch,
    Form,
    call_bytes,
    decode_lite,
    disp_offset,
    is_boundary,
    known_nops,
    marked_nops,
    nops,
    written_by_ftpatch,
)

RECORD = 0x4654  # "FT": the top 16 bits of the r_addend of an entry ftpatch nop'd
# Per form, the relocation types a tag names (tag 1, tag 2) in an i386 object: gcc's first, clang's or
# `as -mrelax-relocations=no`'s second.
TAG_TYPES = {Form.REL32: (2, 4), Form.GOT_EBX: (43, 3)}  # R_386_PC32, R_386_PLT32; R_386_GOT32X, R_386_GOT32
# What gcc 12 / gas 2.40 emit for a form: the type restored for a site nop'd before records existed,
# when no live site of the same form says otherwise.
_DEFAULT_TYPE = {
    X86_64.name: {Form.REL32: 4, Form.GOTPCREL: 41},
    I386.name: {Form.REL32: 2, Form.GOT_EBX: 43},
}
_ENDBR = (bytes.fromhex("f30f1efa"), bytes.fromhex("f30f1efb"))
# Why a nop of ftpatch's has no entry left, and what works (FACTS.md: gold's -r drops NONE entries).
_LOST = (
    ": a partial link by gold (`ld.gold -r`) drops the NONE entries that say what call each nop was; run "
    "`ftpatch call` on the objects before the partial link, or link them with bfd (`ld -r`) or lld, which keep them"
)


def name_hash(name: str) -> int:
    return zlib.crc32(name.encode())


def record(r_type: int, name: str) -> int:
    """The r_addend of a nop'd entry: what restores it, the -4 of every call relocation aside."""
    return RECORD << 48 | r_type << 32 | name_hash(name)


# gcc -flto writes GIMPLE into .gnu.lto_* sections, and the link compiles it to machine code (FACTS.md).
SLIM_LTO = (
    "a slim LTO object (gcc -flto): it holds GIMPLE, not machine code, so no profiling call is here to patch; "
    "the link compiles it, so patch the linked program"
)
FAT_LTO = (
    "a fat LTO object (gcc -flto -ffat-lto-objects): a link with -flto compiles its GIMPLE again and does not use "
    "this machine code, so patching it changes nothing in that program; patch the linked program"
)


def scan_object(elf: ElfFile, targets: Iterable[str], base: int = 0) -> ScanResult:
    lto = _lto(elf)
    if lto == "slim":
        return ScanResult(elf.path, elf.type_name, elf.arch, elf.data, (), base, opaque=SLIM_LTO)
    scanner = _Scanner(elf, targets)
    groups = scanner.run()
    return ScanResult(
        elf.path,
        elf.type_name,
        elf.arch,
        elf.data,
        groups,
        base,
        find_strays=partial(scanner.strays, groups),
        function_at=partial(_function_at, elf),
        readback=scanner.readback,
        warnings=(FAT_LTO,) if lto else (),
    )


def _lto(elf: ElfFile) -> str:
    """What kind of gcc -flto object `elf` is: "slim", "fat", or "" for none. A slim one has no machine
    code at all, and gcc 10 and later also mark it with the symbol __gnu_lto_slim."""
    if not any(s.name.startswith(".gnu.lto_") for s in elf.sections):
        return ""
    code = any(s.is_exec and s.sh_type != SHT_NOBITS and s.sh_size for s in elf.sections)
    return "slim" if not code or (elf.has_symtab and elf.symbols.named(["__gnu_lto_slim"])) else "fat"


def _function_at(elf: ElfFile, section: Section, offset: int) -> str | None:
    symbol = elf.symbols.function_at(section.index, offset)
    return symbol.name if symbol else None


class _Scanner:
    def __init__(self, elf: ElfFile, targets: Iterable[str]) -> None:
        self.elf = elf
        self.arch = elf.arch
        self.target_names = frozenset(targets)
        self.targets: dict[int, str] = {}  # symbol index -> name, of every target symbol
        self.groups: list[SiteGroup] = []
        self.found_strays: list[str] = []  # what the scan itself met that `call` cannot restore

    def run(self) -> tuple[SiteGroup, ...]:
        elf = self.elf
        relocs = [s for s in elf.sections if s.sh_type in (SHT_REL, SHT_RELA)]
        applied: list[tuple[Section, Section | None]] = [
            (rel, sec) for rel in relocs if (sec := elf.applied_to(rel)).is_exec
        ]
        if applied:
            self.targets = elf.symbols.named(self.target_names)
        if self.targets:
            self._add_relocated(self._read(applied))
        self._add_recorded()
        return tuple(self.groups)

    def _read(self, tables: Sequence[tuple[Section, Section | None]]) -> Relocations:
        for rel, _ in tables:
            if rel.sh_link != self.elf.symtab.index:
                raise self.elf.fail(
                    f"relocation section {rel.name} links to section [{rel.sh_link}], not the symbol table"
                )
        return self.elf.relocations(tables, len(self.elf.symbols))

    def _add_relocated(self, entries: Relocations) -> None:
        live = self._live_groups(entries)
        self.groups += live
        if 0 not in entries.values:
            return
        zeroed = entries.holding(0)
        if self.arch.rela:
            recorded = [i for i in zeroed if entries.r_addend[i] >> 48 == RECORD]
            self.groups += self._recorded_rela(entries, recorded)
            older = [i for i in zeroed if entries.r_addend[i] == self.arch.call_addend(Form.REL32)]
        else:
            tagged, older = self._tagged_rel(entries, zeroed)
            self.groups += tagged
        self.groups += self._older_groups(entries, older, live)

    # -- entries and sites -------------------------------------------------------------

    def _entry(self, symbol: int, r_type: int) -> tuple[bytes, bytes]:
        """What a site's entry holds after r_offset, for a live call and once nop'd."""
        arch, word = self.arch, self.arch.word
        r_info = (symbol << arch.r_sym_shift | r_type).to_bytes(word, "little")
        if not arch.rela:
            return r_info, bytes(word)
        addend = arch.call_addend(Form.REL32).to_bytes(word, "little", signed=True)
        return r_info + addend, bytes(word) + record(r_type, self.targets[symbol]).to_bytes(word, "little")

    def _tag(self, form: Form, r_type: int) -> int:
        return 1 + TAG_TYPES[form].index(r_type) if not self.arch.rela else 0

    def _group(
        self, entries: Relocations, positions: Sequence[int], form: Form, symbol: int, r_type: int, held: bytes
    ) -> SiteGroup | None:
        """The sites of these entries; None if one does not fit in its section's bytes (see _misfit)."""
        data, disp, length, n = self.elf.data, disp_offset(form), SITE_LENGTH[form], len(positions)
        tables = [entries.table[i] for i in positions]
        starts = [entries.r_offset[i] - disp for i in positions]
        call = call_bytes(form, 0 if self.arch.rela else self.arch.call_addend(form))
        if tables.count(tables[0]) == n:  # the usual case: one table, so one section, and columns of one value
            rel, sec = entries.tables[tables[0]]
            assert sec is not None
            sections: Sequence[Section] = (sec,) * n
            rels: Sequence[Section] = (rel,) * n
            fits = sec.sh_type != SHT_NOBITS and min(starts) >= 0 and max(starts) + length <= sec.sh_size
            first = entries.first[tables[0]]
            indices = [i - first for i in positions]
            codes = [data[at : at + length] for at in [sec.sh_offset + start for start in starts]]
        else:
            sections = [entries.section(i) for i in positions]
            rels = [entries.tables[t][0] for t in tables]
            fits = all(
                sec.sh_type != SHT_NOBITS and 0 <= start and start + length <= sec.sh_size
                for sec, start in zip(sections, starts, strict=True)
            )
            indices = [i - entries.first[t] for i, t in zip(positions, tables, strict=True)]
            codes = [
                data[sec.sh_offset + start : sec.sh_offset + start + length]
                for sec, start in zip(sections, starts, strict=True)
            ]
        if not fits:
            return None
        call_entry, nop_entry = self._entry(symbol, r_type)
        return SiteGroup(
            form,
            self.targets[symbol],
            tuple(sections),
            tuple(starts),
            tuple(codes),
            (call,) * n,
            tuple(rels),
            tuple(indices),
            held,
            call_entry,
            nop_entry,
            self._tag(form, r_type),
        )

    def _misfit(self, entries: Relocations, positions: Sequence[int], form: Form) -> tuple[int, InputError]:
        """The first of these entries whose site does not fit in its section's bytes, and why."""
        disp, length = disp_offset(form), SITE_LENGTH[form]
        for i in positions:
            sec, start = entries.section(i), entries.r_offset[i] - disp
            if sec.sh_type == SHT_NOBITS:
                return i, self.elf.fail(
                    f"site {sec.where(start)} is in {sec.name}, which has no file bytes (SHT_NOBITS), relocation {entries.name(i)}"
                )
            if start < 0 or start + length > sec.sh_size:
                return i, self.elf.fail(
                    f"site {sec.where(start)} of {length} bytes does not fit in {sec.name} ({sec.sh_size:#x} bytes), relocation {entries.name(i)}"
                )
        raise AssertionError("_misfit called for entries that fit")

    def _where(self, entries: Relocations, i: int) -> str:
        return entries.section(i).where(entries.r_offset[i])

    def _live_groups(self, entries: Relocations) -> list[SiteGroup]:
        """One group per r_info value against a target: one symbol and one type, so one form.

        Every value is checked before any group is made, so that the error
        reported is the one of the first bad entry in table order.
        """
        arch, targets = self.arch, self.targets
        groups: list[SiteGroup] = []
        problems: list[tuple[int, FtpatchError]] = []
        call_addend = arch.call_addend(Form.REL32)
        for r_info in entries.values:
            symbol, r_type = arch.r_sym(r_info), arch.r_type(r_info)
            if r_info == 0 or symbol not in targets:
                continue
            positions = entries.holding(r_info)
            form = arch.call_forms.get(r_type)
            i = positions[0]
            if form is None:
                # -mcmodel=large: gcc's R_X86_64_PLTOFF64, clang's R_X86_64_GOT64, no single call instruction.
                problems.append(
                    (
                        i,
                        InputError(
                            self.elf.path,
                            f"{arch.reloc_name(r_type)} against {targets[symbol]} at {self._where(entries, i)} is not a call ftpatch patches (-mcmodel=large, or a reference that is no call), relocation {entries.name(i)}",
                        ),
                    )
                )
                continue
            if (
                arch.rela
                and (odd := next((j for j in positions if entries.r_addend[j] != call_addend), None)) is not None
            ):
                problems.append(
                    (
                        odd,
                        InputError(
                            self.elf.path,
                            f"{arch.reloc_name(r_type)} against {targets[symbol]} at {self._where(entries, odd)} has addend {entries.r_addend[odd]}, where a call's is {call_addend}: not a call ftpatch patches, relocation {entries.name(odd)}",
                        ),
                    )
                )
                continue
            held = self._entry(symbol, r_type)[0]
            if (group := self._group(entries, positions, form, symbol, r_type, held)) is not None:
                groups.append(group)
            else:
                problems.append(self._misfit(entries, positions, form))
        if problems:
            raise min(problems, key=itemgetter(0))[1]
        return groups

    def _recorded_rela(self, entries: Relocations, recorded: list[int]) -> list[SiteGroup]:
        """The sites whose NONE entry holds ftpatch's record, one group per record."""
        arch, groups = self.arch, []
        by_record: dict[int, list[int]] = {}
        for i in recorded:
            by_record.setdefault(entries.r_addend[i], []).append(i)
        hashes: dict[int, list[int]] = {}
        for symbol, name in self.targets.items():
            hashes.setdefault(name_hash(name), []).append(symbol)
        for value, positions in by_record.items():
            r_type, wanted, i = value >> 32 & 0xFFFF, value & 0xFFFFFFFF, positions[0]
            form = arch.call_forms.get(r_type)
            symbols = hashes.get(wanted, [])
            if form is None or len(symbols) != 1:
                why = (
                    f"its record names {arch.reloc_name(r_type)}, which is no call"
                    if form is None
                    else "its record names a symbol that is not one of the targets (was it nop'd with a --symbol?)"
                    if not symbols
                    else "its record names a symbol that more than one target symbol could be"
                )
                self.found_strays.append(
                    f"{self._where(entries, i)}: relocation {entries.name(i)} was nop'd, but {why}"
                )
                continue
            group = self._group(
                entries, positions, form, symbols[0], r_type, bytes(arch.word) + value.to_bytes(8, "little")
            )
            if group is None:
                raise self._misfit(entries, positions, form)[1]
            groups.append(group)
        return groups

    def _tagged_rel(self, entries: Relocations, zeroed: list[int]) -> tuple[list[SiteGroup], list[int]]:
        """The sites of zeroed REL entries whose nop carries a tag, one group per form, type and symbol;
        and the zeroed entries whose nop carries none."""
        arch, data, known = self.arch, self.elf.data, known_nops(self.arch)
        by_call: dict[tuple[Form, int, int], list[int]] = {}
        untagged = []
        for i in zeroed:
            sec, r_offset = entries.section(i), entries.r_offset[i]
            end = sec.sh_offset + r_offset + 4
            tagged = [
                (form, nop)
                for form in (Form.REL32, arch.pic_form)
                if sec.sh_type != SHT_NOBITS
                and disp_offset(form) <= r_offset
                and r_offset + 4 <= sec.sh_size
                and (nop := known.get(data[end - SITE_LENGTH[form] : end])) is not None
                and nop.tag in TAGS
            ]
            if not tagged:
                untagged.append(i)
                continue
            (form, nop), *more = tagged
            symbols = [s for s, name in self.targets.items() if nop.entry is None or at_entry(name) == nop.entry]
            if more or len(symbols) != 1:
                why = (
                    "a 5-byte and a 6-byte tagged nop end there"
                    if more
                    else f"it could have called {len(symbols)} target symbols"
                )
                self.found_strays.append(
                    f"{self._where(entries, i)}: relocation {entries.name(i)} was nop'd, but {why}"
                )
                continue
            by_call.setdefault((form, TAG_TYPES[form][nop.tag - 1], symbols[0]), []).append(i)
        groups = []
        for (form, r_type, symbol), positions in by_call.items():
            group = self._group(entries, positions, form, symbol, r_type, bytes(arch.word))
            assert group is not None  # each nop was found inside its section
            groups.append(group)
        return groups, untagged

    # -- entries nop'd before records existed -------------------------------------------

    def _older_groups(self, entries: Relocations, zeroed: list[int], live: list[SiteGroup]) -> list[SiteGroup]:
        """The sites nop'd before records existed: a zeroed entry (and, on RELA, addend -4) whose
        displacement ends where a known nop ends. One group per form."""
        arch = self.arch
        live_symbols = {arch.r_sym(int.from_bytes(g.held[: arch.word], "little")) for g in live}
        live_types: dict[Form, set[int]] = {}
        for group in live:
            live_types.setdefault(group.form, set()).add(arch.r_type(int.from_bytes(group.held[: arch.word], "little")))
        by_form: dict[Form, list[int]] = {}
        for i in zeroed:
            form = self._older_form(entries, i)
            if form is not None:
                by_form.setdefault(form, []).append(i)
            elif arch.rela and entries.section(i).sh_type != SHT_NOBITS:
                self.found_strays.append(
                    f"{self._where(entries, i)}: relocation {entries.name(i)} has r_info 0 and addend -4, but no known nop ends at its displacement"
                )
        held = bytes(arch.word) + (
            arch.call_addend(Form.REL32).to_bytes(arch.word, "little", signed=True) if arch.rela else b""
        )
        groups = []
        for form, positions in by_form.items():
            i = positions[0]
            where, entry = entries.section(i).where, f"relocation {entries.name(i)}"
            symbol = self._older_symbol(live_symbols, where(entries.r_offset[i]), entry)
            types = live_types.get(form, set())
            if len(types) > 1:
                names = ", ".join(sorted(arch.reloc_name(t) for t in types))
                raise VerifyError(
                    self.elf.path,
                    f"site {where(entries.r_offset[i] - disp_offset(form))} could be restored as any of {names}, {entry}",
                )
            r_type = next(iter(types)) if types else _DEFAULT_TYPE[arch.name][form]
            group = self._group(entries, positions, form, symbol, r_type, held)
            assert group is not None  # _older_form found each nop inside its section
            groups.append(group)
        return groups

    def _older_form(self, entries: Relocations, i: int) -> Form | None:
        """The call form whose nop ends where this entry's displacement ends, if any."""
        sec, r_offset = entries.section(i), entries.r_offset[i]
        if sec.sh_type == SHT_NOBITS or r_offset < 1 or r_offset + 4 > sec.sh_size:
            return None
        data, end = self.elf.data, sec.sh_offset + r_offset + 4
        fits = [
            form
            for form in (Form.REL32, self.arch.pic_form)
            if r_offset >= disp_offset(form)
            and data[end - SITE_LENGTH[form] : end] in nops(SITE_LENGTH[form], self.arch)
        ]
        if len(fits) < 2:
            return fits[0] if fits else None
        function = self.elf.symbols.function_at(sec.index, r_offset)
        if function is not None:
            text = data[sec.sh_offset + function.st_value : end]
            fits = [f for f in fits if is_boundary(text, self.arch, 0, len(text) - SITE_LENGTH[f])]
        if len(fits) != 1:
            raise VerifyError(
                self.elf.path,
                f"site ending at {sec.where(r_offset + 4)} may be a 5-byte or a 6-byte nop, and decoding {demangle(function.name) if function else 'its function'} does not tell, relocation {entries.name(i)}",
            )
        return fits[0]

    def _older_symbol(self, live_symbols: set[int], at: str, entry: str) -> int:
        candidates = set(self.targets) if len(self.targets) == 1 else live_symbols & set(self.targets)
        if len(candidates) != 1:
            names = ", ".join(sorted(self.targets.values()))
            raise VerifyError(self.elf.path, f"the nop at {at} could have called any of {names}, {entry}")
        return next(iter(candidates))

    # -- what `call` must know before it writes ----------------------------------------------

    def readback(self, group: SiteGroup, new: bytes, positions: Sequence[int]) -> list[int]:
        """Of these sites of the group, those `call` would not restore exactly were `new` written over them:
        on RELA the record says all; on REL the nop must name the type, and the symbol be the one of its kind."""
        if self.arch.rela or group.target is None:
            return []
        nop = known_nops(self.arch).get(new)
        kind = [name for name in self.targets.values() if nop is not None and nop.entry in (None, at_entry(name))]
        return [] if nop is not None and nop.tag in TAGS and kind == [group.target] else list(positions)

    def strays(self, groups: tuple[SiteGroup, ...]) -> tuple[str, ...]:
        """What `call` cannot restore: what the scan met, and nops only ftpatch writes, or nops at a
        function's entry, where no relocation entry says a site is (`ld -r` by gold drops NONE entries)."""
        elf, sites = self.elf, {(s.index, start) for g in groups for s, start in zip(g.sections, g.starts, strict=True)}
        found = list(self.found_strays)
        pattern = _marked_pattern(self.arch)
        for sec in (s for s in elf.sections if s.is_exec and s.sh_type != SHT_NOBITS):
            code = elf.section_data(sec)
            loose = {m.start(): m.group() for m in pattern.finditer(code) if (sec.index, m.start()) not in sites}
            found += [
                f"{sec.where(at)}: holds {loose[at].hex(':')}, a nop ftpatch writes, with no relocation entry to "
                f"restore{_LOST}"
                for at in sorted(self._on_instructions(sec, loose))
            ]
        # clang's -fpatchable-function-entry writes ftpatch's entry nop too, and lists where.
        if elf.has_symtab and elf.section_named("__patchable_function_entries") is None:
            for _, row in elf.symbols.function_rows():
                if (
                    not 0 < row.st_shndx < len(elf.sections)
                    or (sec := elf.sections[row.st_shndx]).sh_type == SHT_NOBITS
                ):
                    continue
                text = elf.section_data(sec)
                at = row.st_value + 4 if text[row.st_value : row.st_value + 4] in _ENDBR else row.st_value
                code = bytes(text[at : at + 6])
                nop = next((c for c in (code, code[:5]) if written_by_ftpatch(c, self.arch)), None)
                if nop is not None and (sec.index, at) not in sites:
                    found.append(
                        f"{sec.where(at)}: holds {nop.hex(':')} at a function's entry, a nop ftpatch writes, with no "
                        f"relocation entry to restore{_LOST}"
                    )
        return tuple(dict.fromkeys(found))

    def _on_instructions(self, sec: Section, offsets: Iterable[int]) -> set[int]:
        """The offsets in `sec` that begin an instruction, decoded from the start of the function holding
        each (or of the section, in an object without symbols): bytes found by a search may lie inside
        another instruction (`eb 2e` then gas's `8d 74 26 00` hold `2e 8d 74 26 00`)."""
        found: set[int] = set()
        starts = {0}
        if self.elf.has_symtab:
            starts |= {row.st_value for _, row in self.elf.symbols.function_rows() if row.st_shndx == sec.index}
        ordered = sorted(starts)
        by_start: dict[int, set[int]] = {}
        for at in offsets:
            by_start.setdefault(ordered[bisect.bisect_right(ordered, at) - 1], set()).add(at)
        code = bytes(self.elf.section_data(sec)) if by_start else b""
        for start, wanted in by_start.items():
            # Through the whole of the last instruction wanted (15 bytes at most): cut inside it, it would not
            # decode, and the last nop of each function, where ftpatch puts an mcount site's, went unseen.
            for at, _size, _mnemonic, _ops in decode_lite(code[start : max(wanted) + 15], self.arch, start):
                if at in wanted:
                    found.add(at)
        return found

    def _add_recorded(self) -> None:
        """Sites gcc -mnop-mcount left as nops, known only from __mcount_loc's relocations."""
        elf = self.elf
        loc = next((s for s in elf.sections if s.name == "__mcount_loc"), None)
        if loc is None:
            return
        rels = [(s, loc) for s in elf.sections if s.sh_type in (SHT_REL, SHT_RELA) and s.sh_info == loc.index]
        if not rels:
            return
        entries = self._read(rels)
        words_ = elf.section_data(loc)
        known: dict[int, set[int]] = {}
        for group in self.groups:
            for section, start in zip(group.sections, group.starts, strict=True):
                known.setdefault(section.index, set()).add(start)
        # An entry names a symbol of the site's section (usually the section symbol) and an offset from it.
        symbols = [self.arch.r_sym(r_info) for r_info in entries.r_info]
        places = {symbol: elf.symbols.place(symbol) for symbol in set(symbols)}
        positions, sections, starts = [], [], []
        for i, symbol in enumerate(symbols):
            addend = entries.addend(i)
            if addend is None:
                r_offset = entries.r_offset[i]
                addend = int.from_bytes(words_[r_offset : r_offset + self.arch.word], "little", signed=True)
            shndx, st_value = places[symbol]
            if 0 < shndx < len(elf.sections) and st_value + addend not in known.get(shndx, ()):
                positions.append(i)
                sections.append(elf.sections[shndx])
                starts.append(st_value + addend)
        for i, sec, start in zip(positions, sections, starts, strict=True):
            where = f"relocation {entries.name(i)}"
            if sec.sh_type == SHT_NOBITS:
                raise elf.fail(
                    f"site {sec.where(start)} is in {sec.name}, which has no file bytes (SHT_NOBITS), {where}"
                )
            if start < 0 or start + 5 > sec.sh_size:
                raise elf.fail(
                    f"site {sec.where(start)} of 5 bytes does not fit in {sec.name} ({sec.sh_size:#x} bytes), {where}"
                )
        if positions:
            data = elf.data
            codes = tuple(
                [
                    data[sec.sh_offset + start : sec.sh_offset + start + 5]
                    for sec, start in zip(sections, starts, strict=True)
                ]
            )
            self.groups.append(
                SiteGroup(Form.RECORDED, None, tuple(sections), tuple(starts), codes, (None,) * len(codes))
            )


@cache
def _marked_pattern(arch: Arch) -> re.Pattern[bytes]:
    """Every nop only ftpatch writes, longest first, as one pattern the search runs in C.

    (Not the jmp nops: a tail jump over int3 padding to the next function looks the same.)
    """
    marked = sorted((n for length in (6, 5) for n in marked_nops(length, arch) if n[0] != 0xEB), key=len, reverse=True)
    return re.compile(b"|".join(re.escape(n) for n in marked))
