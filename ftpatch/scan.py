"""Scanning: find the profiling call sites of a relocatable object through its relocations.

Linked files (ET_EXEC, ET_DYN) have no relocations at their sites: scan_elf
hands them to linked.py, whose sites become groups with no relocation column.

A site is live when a relocation against a target symbol (mcount, _mcount,
__fentry__ or a --symbol) still applies to it. ftpatch's own nop leaves the
relocation in place with its whole r_info zeroed, the only relocation GNU ld
links everywhere (FACTS.md). Such a dormant site is found again by the rule
written out in README.md, "How `call` finds a nop'd site again":

1. the entry's r_info is 0 and it applies to an executable section;
2. the site's bytes are a known nop ending where the 32-bit displacement ends;
   on RELA the r_addend is still -4, the addend every x86-64 call form has;
3. a 5-byte and a 6-byte nop can both fit (66 0f 1f 44 00 00 holds
   0f 1f 44 00 00): capstone decodes the function from its symbol and the
   site begins on the instruction boundary;
4. the symbol is the file's one target symbol, or the one the live sites call;
5. the type is the one the live sites of the same form use, else what gcc 12
   and gas 2.40 emit: R_X86_64_PLT32, R_X86_64_GOTPCRELX, R_386_PC32, R_386_GOT32X.

Speed: the relocation tables are decoded together, as columns of one array,
and sites are kept as SiteGroups, columns again; a Site object costs more to
make (a microsecond) than finding its site does. pyelftools' per-entry
iteration costs 8 microseconds an entry. On an object of 20,000 sites the scan
takes about 15 ms.
"""

from __future__ import annotations

import array
import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property, partial
from itertools import accumulate, chain, compress, groupby, repeat
from operator import attrgetter, itemgetter

from .archive import is_archive, members
from .elf import ELFCLASS64, ET_REL, SHT_NOBITS, SHT_REL, SHT_RELA, ElfFile, Section, read_input, words
from .errors import FtpatchError, InputError, VerifyError
from .x86 import SITE_LENGTH, Form, call_bytes, disp_offset, is_boundary, known_nop, nops

DEFAULT_TARGETS = ("mcount", "_mcount", "__fentry__")

# Relocation types by spec name; pyelftools 0.33 lacks the relaxable GOT ones.
R_X86_64 = {
    "R_X86_64_NONE": 0,
    "R_X86_64_PC32": 2,
    "R_X86_64_PLT32": 4,
    "R_X86_64_GOTPCREL": 9,
    "R_X86_64_GOTPCRELX": 41,
}
R_386 = {"R_386_NONE": 0, "R_386_GOT32": 3, "R_386_PC32": 2, "R_386_PLT32": 4, "R_386_GOT32X": 43}

# Which form each call relocation implies, and the type gcc 12 / gas 2.40 emit for a form.
_FORM_OF = {
    True: {2: Form.REL32, 4: Form.REL32, 9: Form.GOTPCREL, 41: Form.GOTPCREL},
    False: {2: Form.REL32, 4: Form.REL32, 3: Form.GOT_EBX, 43: Form.GOT_EBX},
}
_DEFAULT_TYPE = {
    True: {Form.REL32: 4, Form.GOTPCREL: 41},
    False: {Form.REL32: 2, Form.GOT_EBX: 43},
}
# The implicit addend a REL call site holds in its displacement.
_REL_ADDEND = {Form.REL32: -4, Form.GOT_EBX: 0}
_RELA_CALL_ADDEND = -4


def reloc_type_name(x86_64: bool, r_type: int) -> str:
    names = {v: k for k, v in (R_X86_64 if x86_64 else R_386).items()}
    if r_type in names:
        return names[r_type]
    from elftools.elf.enums import ENUM_RELOC_TYPE_i386, ENUM_RELOC_TYPE_x64

    table = ENUM_RELOC_TYPE_x64 if x86_64 else ENUM_RELOC_TYPE_i386
    return next((k for k, v in table.items() if v == r_type), f"type {r_type}")


class State(StrEnum):
    CALL = "call"
    NOP = "nop"
    OTHER = "other"  # neither the expected call nor a known nop: verification fails on it


def site_state(code: bytes, call: bytes | None, x86_64: bool) -> State:
    """The one rule for what a site holds: its call, a known nop, or neither."""
    return State.CALL if code == call else State.NOP if known_nop(code, x86_64) else State.OTHER


@dataclass(frozen=True)
class Reloc:
    """The relocation entry of a site: where its r_info lives and the two values it takes."""

    section: str
    index: int
    info_offset: int  # file offset of r_info
    info_size: int
    r_info: int  # as found
    call_info: int  # the value that makes the site a live call


@dataclass(frozen=True)
class Site:
    function: str | None
    section: str
    offset: int
    file_offset: int
    form: Form
    target: str | None  # None for a RECORDED site, which never called anything
    state: State
    code: bytes  # the bytes found at the site
    call: bytes | None  # the exact call these bytes must be; None for a RECORDED site
    reloc: Reloc | None

    @property
    def length(self) -> int:
        return len(self.code)

    @property
    def where(self) -> str:
        place = f"{self.section}+{self.offset:#x}"
        return f"{self.function} ({place})" if self.function else place

    def to_json(self) -> dict[str, object]:
        return {
            "function": self.function,
            "section": self.section,
            "offset": self.offset,
            "file_offset": self.file_offset,
            "length": self.length,
            "form": self.form.value,
            "target": self.target,
            "state": self.state.value,
        }


@dataclass(frozen=True)
class SiteGroup:
    """Sites that share their form, their target and, in an object, the r_info their
    relocation entries hold (so their symbol and type) and the r_info of a call.

    Everything else is a column, one value a site: its section, its offset there,
    the bytes found, the call it must hold, its relocation entry. An object's
    20,000 sites are one or two groups, however many sections and relocation
    tables hold them, so verifying and patching them are passes over columns;
    a Site object for each is made only when one is asked for (ScanResult.sites).
    """

    form: Form
    target: str | None  # None for RECORDED sites
    sections: tuple[Section, ...]  # each site's section
    starts: tuple[int, ...]  # each site's offset in its section
    codes: tuple[bytes, ...]  # the bytes found at each site
    calls: tuple[bytes | None, ...]  # the exact call each site must hold; None for RECORDED sites
    rels: tuple[Section, ...] = ()  # each site's SHT_REL or SHT_RELA section; none in a linked file
    indices: tuple[int, ...] = ()  # each site's entry in its relocation section
    r_info: int = 0  # what every entry holds now: call_info, or 0 once ftpatch made the site a nop
    call_info: int = 0  # what an entry holds for a live call

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def info_size(self) -> int:
        """Bytes in r_info: a word of the file's class; REL and RELA entries are 2 and 3 words."""
        rel = self.rels[0]
        return rel.sh_entsize // (3 if rel.sh_type == SHT_RELA else 2)

    def file_offsets(self, base: int = 0) -> list[int]:
        """The file offset of each site; `base` is added."""
        sections, starts = self.sections, self.starts
        if sections and sections.count(sections[0]) == len(sections):  # one section: the usual case
            first = base + sections[0].sh_offset
            return [first + start for start in starts]
        return [base + section.sh_offset + start for section, start in zip(sections, starts, strict=True)]

    def info_offsets(self, base: int = 0) -> list[int]:
        """The file offset of each site's r_info, its entry's second word; `base` is added."""
        rels, indices, word = self.rels, self.indices, base + self.info_size
        if rels.count(rels[0]) == len(rels):  # one relocation table: the usual case
            first, entsize = word + rels[0].sh_offset, rels[0].sh_entsize
            return [first + index * entsize for index in indices]
        return [word + rel.sh_offset + index * rel.sh_entsize for rel, index in zip(rels, indices, strict=True)]

    def subset(self, keep: Sequence[bool]) -> SiteGroup:
        """The sites for which `keep` is true."""
        columns = (self.sections, self.starts, self.codes, self.calls, self.rels, self.indices)
        sections, starts, codes, calls, rels, indices = (tuple(compress(c, keep)) for c in columns)
        return SiteGroup(
            self.form, self.target, sections, starts, codes, calls, rels, indices, self.r_info, self.call_info
        )

    def site(self, i: int, function: str | None, x86_64: bool) -> Site:
        section, start, code, call = self.sections[i], self.starts[i], self.codes[i], self.calls[i]
        reloc = None
        if self.rels:
            rel, index, size = self.rels[i], self.indices[i], self.info_size
            info_offset = rel.sh_offset + index * rel.sh_entsize + size
            reloc = Reloc(rel.name, index, info_offset, size, self.r_info, self.call_info)
        return Site(
            function,
            section.name,
            start,
            section.sh_offset + start,
            self.form,
            self.target,
            site_state(code, call, x86_64),
            code,
            call,
            reloc,
        )


def _no_function(section: Section, offset: int) -> str | None:
    return None


@dataclass(frozen=True)
class ScanResult:
    path: str
    machine: str
    type: str
    x86_64: bool
    data: bytes
    groups: tuple[SiteGroup, ...]
    base: int = 0  # where this ELF file starts in the file read: an archive member's offset
    # Zeroed relocations with a call's addend whose bytes are no known nop: `call` refuses them.
    strays: tuple[str, ...] = ()
    # Why nop'd sites of this (linked, stripped) file cannot be found; `call` refuses it. "" when they can.
    blind: str = ""
    # The name of the function holding a place (section, offset), if the file tells.
    function_at: Callable[[Section, int], str | None] = field(default=_no_function, repr=False, compare=False)

    @cached_property
    def sites(self) -> tuple[Site, ...]:
        """Every site, in file order."""
        sites = [
            group.site(i, self.function_at(section, start), self.x86_64)
            for group in self.groups
            for i, (section, start) in enumerate(zip(group.sections, group.starts, strict=True))
        ]
        sites.sort(key=attrgetter("file_offset"))
        return tuple(sites)


@dataclass(frozen=True)
class _Entries:
    """The entries of some relocation tables, in table order, as columns.

    All the tables that apply to executable sections are read as one: gcc
    -ffunction-sections gives an object one table a function, and a pass per
    table would cost more than the rest of the scan. An entry is named by its
    position in these columns; `table` and index() say where it lives.
    """

    tables: tuple[tuple[Section, Section], ...]  # (relocation section, the section it applies to)
    # Arrays, not lists: an object linked with ld -r can have millions of entries, and a
    # list of ints costs 36 bytes an entry where an array costs 8.
    table: array.array[int]  # each entry's table, an index into `tables`
    first: list[int]  # the position of each table's first entry: entry i is [i - first[table[i]]] of its table
    r_offset: array.array[int]
    r_info: array.array[int]
    r_addend: array.array[int]  # 0 for an entry of a REL table, whose addend is in the bytes relocated

    @classmethod
    def read(cls, elf: ElfFile, tables: Sequence[tuple[Section, Section]]) -> _Entries:
        """The tables' entries, each table's layout and every symbol index checked."""
        word = 8 if elf.elfclass == ELFCLASS64 else 4
        unsigned_code = "Q" if word == 8 else "I"
        r_offset, r_info = array.array(unsigned_code), array.array(unsigned_code)
        r_addend = array.array("q" if word == 8 else "i")
        counts = []
        for rel, _ in tables:
            if rel.sh_link != elf.symtab.index:
                raise elf.fail(f"relocation section {rel.name} links to section [{rel.sh_link}], not the symbol table")
            entsize = word * (3 if rel.sh_type == SHT_RELA else 2)
            if rel.sh_entsize != entsize:
                raise elf.fail(f"relocation section {rel.name} has sh_entsize {rel.sh_entsize}, expected {entsize}")
            if rel.sh_size % entsize:
                raise elf.fail(f"relocation section {rel.name} size {rel.sh_size:#x} is not a multiple of {entsize}")
            counts.append(rel.sh_size // entsize)
        # Tables of one kind in a row are decoded at once.
        for rela, run in groupby(tables, key=lambda t: t[0].sh_type == SHT_RELA):
            raw = b"".join(elf.section_data(rel) for rel, _ in run)
            columns = 3 if rela else 2
            unsigned = words(raw, word)
            r_offset += unsigned[0::columns]
            r_info += unsigned[1::columns]
            r_addend += (
                words(raw, word, signed=True)[2::3]
                if rela
                else array.array(r_addend.typecode, [0]) * (len(unsigned) // 2)
            )
        table = array.array("I", chain.from_iterable(repeat(t, n) for t, n in enumerate(counts)))
        first = [0, *accumulate(counts)][:-1]
        entries = cls(tuple(tables), table, first, r_offset, r_info, r_addend)
        shift, nsyms = (32 if word == 8 else 8), len(elf.symbols)
        if r_info and max(r_info) >> shift >= nsyms:
            i = next(i for i, info in enumerate(r_info) if info >> shift >= nsyms)
            raise elf.fail(
                f"relocation {entries.name(i)} names symbol {r_info[i] >> shift}, past the end of the symbol table ({nsyms})"
            )
        return entries

    def index(self, i: int) -> int:
        """Entry i's index in its own table."""
        return i - self.first[self.table[i]]

    def name(self, i: int) -> str:
        return f"{self.tables[self.table[i]][0].name}[{self.index(i)}]"

    def section(self, i: int) -> Section:
        return self.tables[self.table[i]][1]

    def rela(self, i: int) -> bool:
        return self.tables[self.table[i]][0].sh_type == SHT_RELA

    def addend(self, i: int) -> int | None:
        """Entry i's r_addend; None on REL."""
        return self.r_addend[i] if self.rela(i) else None

    @cached_property
    def values(self) -> dict[int, None]:
        """Each r_info value once, in table order."""
        return dict.fromkeys(self.r_info)

    def holding(self, r_info: int) -> list[int]:
        """Every entry whose r_info is `r_info`."""
        return [i for i, value in enumerate(self.r_info) if value == r_info]


class _Scanner:
    def __init__(self, elf: ElfFile, targets: Iterable[str]) -> None:
        self.elf = elf
        self.x86_64 = elf.x86_64
        self.target_names = frozenset(targets)
        self.groups: list[SiteGroup] = []
        self.strays: list[str] = []
        self._word = 8 if elf.elfclass == ELFCLASS64 else 4  # bytes in r_offset, r_info
        self._shift = 32 if self._word == 8 else 8  # r_info >> shift is r_sym
        self._type_mask = (1 << self._shift) - 1

    def run(self) -> tuple[SiteGroup, ...]:
        elf = self.elf
        relocs = [s for s in elf.sections if s.sh_type in (SHT_REL, SHT_RELA)]
        applied = [(rel, self._applies_to(rel)) for rel in relocs]
        applied = [(rel, sec) for rel, sec in applied if sec.is_exec]
        targets = {}
        if applied:
            targets = elf.symbols.named(self.target_names)
        if targets:
            self._add_relocated(_Entries.read(elf, applied), targets)
        self._add_recorded()
        return tuple(self.groups)

    def _applies_to(self, rel: Section) -> Section:
        if not 0 < rel.sh_info < len(self.elf.sections):
            raise self.elf.fail(
                f"relocation section {rel.name} applies to section [{rel.sh_info}], which does not exist, sh_info"
            )
        return self.elf.sections[rel.sh_info]

    def _add_relocated(self, entries: _Entries, targets: dict[int, str]) -> None:
        live = self._live_groups(entries, targets)
        self.groups += live
        live_symbols = {group.r_info >> self._shift for group in live}
        live_types: dict[Form, set[int]] = {}
        for group in live:
            live_types.setdefault(group.form, set()).add(group.r_info & self._type_mask)
        self.groups += self._dormant_groups(entries, targets, live_symbols, live_types)

    # -- sites -------------------------------------------------------------------------

    def _group(
        self, entries: _Entries, positions: Sequence[int], form: Form, target: str, r_info: int, call_info: int
    ) -> SiteGroup | None:
        """The sites of these entries; None if one does not fit in its section's bytes (see _misfit)."""
        data, disp, length, n = self.elf.data, disp_offset(form), SITE_LENGTH[form], len(positions)
        tables = [entries.table[i] for i in positions]
        starts = [entries.r_offset[i] - disp for i in positions]
        if tables.count(tables[0]) == n:  # the usual case: one table, so one section, and columns of one value
            rel, sec = entries.tables[tables[0]]
            sections: Sequence[Section] = (sec,) * n
            rels: Sequence[Section] = (rel,) * n
            fits = sec.sh_type != SHT_NOBITS and min(starts) >= 0 and max(starts) + length <= sec.sh_size
            first = entries.first[tables[0]]
            indices = [i - first for i in positions]
            codes = [data[at : at + length] for at in [sec.sh_offset + start for start in starts]]
            calls: Sequence[bytes] = (self._expected_call(entries.rela(positions[0]), form),) * n
        else:
            sections = [entries.tables[t][1] for t in tables]
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
            calls = [self._expected_call(entries.rela(i), form) for i in positions]
        if not fits:
            return None
        return SiteGroup(
            form,
            target,
            tuple(sections),
            tuple(starts),
            tuple(codes),
            tuple(calls),
            tuple(rels),
            tuple(indices),
            r_info,
            call_info,
        )

    def _misfit(self, entries: _Entries, positions: Sequence[int], form: Form) -> tuple[int, InputError]:
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

    def _expected_call(self, rela: bool, form: Form) -> bytes:
        # RELA keeps the addend in the entry, and gas leaves the displacement 0;
        # REL keeps it in the displacement itself.
        return call_bytes(form, 0 if rela else _REL_ADDEND[form])

    def _live_groups(self, entries: _Entries, targets: dict[int, str]) -> list[SiteGroup]:
        """One group per r_info value against a target: one symbol and one type, so one form.

        Every value is checked before any group is made, so that the error
        reported is the one of the first bad entry in table order.
        """
        groups: list[SiteGroup] = []
        problems: list[tuple[int, FtpatchError]] = []
        for r_info in entries.values:
            symbol, r_type = r_info >> self._shift, r_info & self._type_mask
            if r_info == 0 or symbol not in targets:
                continue
            positions = entries.holding(r_info)
            form = _FORM_OF[self.x86_64].get(r_type)
            if form is None:
                i = positions[0]
                problems.append(
                    (
                        i,
                        VerifyError(
                            self.elf.path,
                            f"{reloc_type_name(self.x86_64, r_type)} against {targets[symbol]} at {entries.section(i).where(entries.r_offset[i])} is not a call ftpatch knows, relocation {entries.name(i)}",
                        ),
                    )
                )
            elif (group := self._group(entries, positions, form, targets[symbol], r_info, r_info)) is not None:
                groups.append(group)
            else:
                problems.append(self._misfit(entries, positions, form))
        if problems:
            raise min(problems, key=itemgetter(0))[1]
        return groups

    def _dormant_groups(
        self,
        entries: _Entries,
        targets: dict[int, str],
        live_symbols: set[int],
        live_types: dict[Form, set[int]],
    ) -> list[SiteGroup]:
        """The sites ftpatch made nops: entries with r_info 0 (and, on RELA, addend -4)
        whose displacement ends where a known nop ends. One group per form."""
        if 0 not in entries.values:
            return []
        by_form: dict[Form, list[int]] = {}
        for i in entries.holding(0):
            addend = entries.addend(i)
            if addend is not None and addend != _RELA_CALL_ADDEND:
                continue
            form = self._dormant_form(entries, i)
            if form is not None:
                by_form.setdefault(form, []).append(i)
            elif addend is not None and entries.section(i).sh_type != SHT_NOBITS:
                self.strays.append(
                    f"{entries.section(i).where(entries.r_offset[i])}: relocation {entries.name(i)} has r_info 0 and addend -4, but no known nop ends at its displacement"
                )
        groups = []
        for form, positions in by_form.items():
            i = positions[0]
            where, entry = entries.section(i).where, f"relocation {entries.name(i)}"
            symbol = self._restore_symbol(targets, live_symbols, where(entries.r_offset[i]), entry)
            types = live_types.get(form, set())
            if len(types) > 1:
                names = ", ".join(sorted(reloc_type_name(self.x86_64, t) for t in types))
                raise VerifyError(
                    self.elf.path,
                    f"site {where(entries.r_offset[i] - disp_offset(form))} could be restored as any of {names}, {entry}",
                )
            r_type = next(iter(types)) if types else _DEFAULT_TYPE[self.x86_64][form]
            group = self._group(entries, positions, form, targets[symbol], 0, (symbol << self._shift) | r_type)
            assert group is not None  # _dormant_form found each nop inside its section
            groups.append(group)
        return groups

    def _dormant_form(self, entries: _Entries, i: int) -> Form | None:
        """The call form whose nop ends where this entry's displacement ends, if any."""
        sec, r_offset = entries.section(i), entries.r_offset[i]
        if sec.sh_type == SHT_NOBITS or r_offset < 1 or r_offset + 4 > sec.sh_size:
            return None
        data, end = self.elf.data, sec.sh_offset + r_offset + 4
        six = Form.GOTPCREL if self.x86_64 else Form.GOT_EBX
        fits = [
            form
            for form in (Form.REL32, six)
            if r_offset >= disp_offset(form)
            and data[end - SITE_LENGTH[form] : end] in nops(SITE_LENGTH[form], self.x86_64)
        ]
        if len(fits) < 2:
            return fits[0] if fits else None
        function = self.elf.symbols.function_at(sec.index, r_offset)
        if function is not None:
            text = data[sec.sh_offset + function.st_value : end]
            fits = [f for f in fits if is_boundary(text, self.x86_64, 0, len(text) - SITE_LENGTH[f])]
        if len(fits) != 1:
            raise VerifyError(
                self.elf.path,
                f"site ending at {sec.where(r_offset + 4)} may be a 5-byte or a 6-byte nop, and decoding {function.name if function else 'its function'} does not tell, relocation {entries.name(i)}",
            )
        return fits[0]

    def _restore_symbol(self, targets: dict[int, str], live_symbols: set[int], at: str, entry: str) -> int:
        candidates = set(targets) if len(targets) == 1 else live_symbols & set(targets)
        if len(candidates) != 1:
            names = ", ".join(sorted(targets.values()))
            raise VerifyError(self.elf.path, f"the nop at {at} could have called any of {names}, {entry}")
        return next(iter(candidates))

    def _add_recorded(self) -> None:
        """Sites gcc -mnop-mcount left as nops, known only from __mcount_loc's relocations."""
        elf = self.elf
        loc = next((s for s in elf.sections if s.name == "__mcount_loc"), None)
        if loc is None:
            return
        rels = [(s, loc) for s in elf.sections if s.sh_type in (SHT_REL, SHT_RELA) and s.sh_info == loc.index]
        if not rels:
            return
        entries = _Entries.read(elf, rels)
        words_ = elf.section_data(loc)
        known: dict[int, set[int]] = {}
        for group in self.groups:
            for section, start in zip(group.sections, group.starts, strict=True):
                known.setdefault(section.index, set()).add(start)
        # An entry names a symbol of the site's section (usually the section symbol) and an offset from it.
        symbols = [r_info >> self._shift for r_info in entries.r_info]
        places = {symbol: elf.symbols.place(symbol) for symbol in set(symbols)}
        positions, sections, starts = [], [], []
        for i, symbol in enumerate(symbols):
            addend = entries.addend(i)
            if addend is None:
                r_offset = entries.r_offset[i]
                addend = int.from_bytes(words_[r_offset : r_offset + self._word], "little", signed=True)
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


def _function_at(elf: ElfFile, section: Section, offset: int) -> str | None:
    symbol = elf.symbols.function_at(section.index, offset)
    return symbol.name if symbol else None


def scan_elf(elf: ElfFile, targets: Iterable[str] = DEFAULT_TARGETS, base: int = 0) -> ScanResult:
    if elf.e_type != ET_REL:
        from .linked import scan_linked

        groups, function_at, blind = scan_linked(elf, targets)
        return ScanResult(
            elf.path, elf.machine, elf.type_name, elf.x86_64, elf.data, groups, base, (), blind, function_at
        )
    scanner = _Scanner(elf, targets)
    groups = scanner.run()
    return ScanResult(
        elf.path,
        elf.machine,
        elf.type_name,
        elf.x86_64,
        elf.data,
        groups,
        base,
        tuple(scanner.strays),
        "",
        partial(_function_at, elf),
    )


def scan(path: str, targets: Iterable[str] = DEFAULT_TARGETS) -> ScanResult:
    """Every profiling call site of the ELF file at `path`, in file order."""
    return scan_elf(ElfFile.load(path), targets)


def scan_data(path: str, data: bytes, targets: Iterable[str] = DEFAULT_TARGETS) -> list[ScanResult]:
    """One result for an ELF file, or one per ELF member of a static archive, named `lib.a(member.o)`."""
    if not is_archive(data):
        return [scan_elf(ElfFile(path, data), targets)]
    return [
        scan_elf(ElfFile(f"{path}({m.name})", data[m.offset : m.offset + m.size]), targets, m.offset)
        for m in members(path, data)
    ]


def scan_path(path: str, targets: Iterable[str] = DEFAULT_TARGETS) -> list[ScanResult]:
    return scan_data(path, read_input(path), targets)


def chosen(function: str | None, only: Sequence[str] = (), exclude: Sequence[str] = ()) -> bool:
    """Whether --only / --except globs keep a site of `function`."""
    name = function or ""
    return (not only or any(fnmatch.fnmatchcase(name, g) for g in only)) and not any(
        fnmatch.fnmatchcase(name, g) for g in exclude
    )


__all__ = [
    "DEFAULT_TARGETS",
    "InputError",
    "Reloc",
    "ScanResult",
    "Site",
    "SiteGroup",
    "State",
    "scan",
    "scan_data",
    "scan_elf",
    "scan_path",
]
