"""Scanning: find the profiling call sites of a relocatable object through its relocations.

Linked files (ET_EXEC, ET_DYN) have no relocations at their sites: scan_elf
hands them to linked.py, which yields the same Site objects with reloc=None.

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

Relocation tables are decoded as whole arrays: per-entry iteration in
pyelftools costs 8 microseconds an entry, far too slow for large objects.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property
from itertools import compress
from operator import attrgetter, itemgetter

from .archive import is_archive, members
from .elf import ELFCLASS64, ET_REL, SHT_NOBITS, SHT_REL, SHT_RELA, ElfFile, Section, read_input, words
from .errors import InputError, VerifyError
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
    """Sites of one section that share their form and target and, in an object, the
    relocation section whose entries name them and the r_info those entries hold.

    The sites differ only in where they are, the bytes found there and the call
    they must hold. An object's 20,000 sites make one or two groups, so verifying
    and patching them are passes over columns of ints and bytes; a Site object
    for each is made only when one is asked for (ScanResult.sites).
    """

    section: Section
    form: Form
    target: str | None  # None for RECORDED sites
    starts: tuple[int, ...]  # each site's offset in the section
    codes: tuple[bytes, ...]  # the bytes found at each site
    calls: tuple[bytes | None, ...]  # the exact call each site must hold; None for RECORDED sites
    rel: Section | None = None  # the SHT_REL or SHT_RELA section of the entries; None in a linked file
    indices: tuple[int, ...] = ()  # each site's entry in `rel`
    r_info: int = 0  # what every entry holds now: call_info, or 0 once ftpatch made the site a nop
    call_info: int = 0  # what an entry holds for a live call

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def info_size(self) -> int:
        """Bytes in r_info: a word of the file's class; REL and RELA entries are 2 and 3 words."""
        assert self.rel is not None
        return self.rel.sh_entsize // (3 if self.rel.sh_type == SHT_RELA else 2)

    def info_offsets(self, base: int = 0) -> list[int]:
        """The file offset of each site's r_info, the entry's second word; `base` is added."""
        assert self.rel is not None
        first, entsize = base + self.rel.sh_offset + self.info_size, self.rel.sh_entsize
        return [first + index * entsize for index in self.indices]

    def file_offsets(self, base: int = 0) -> list[int]:
        """The file offset of each site; `base` is added."""
        first = base + self.section.sh_offset
        return [first + start for start in self.starts]

    def subset(self, keep: Sequence[bool]) -> SiteGroup:
        """The sites for which `keep` is true."""
        indices = tuple(compress(self.indices, keep)) if self.rel is not None else ()
        return replace(
            self,
            starts=tuple(compress(self.starts, keep)),
            codes=tuple(compress(self.codes, keep)),
            calls=tuple(compress(self.calls, keep)),
            indices=indices,
        )

    def site(self, i: int, function: str | None, x86_64: bool) -> Site:
        start, code, call = self.starts[i], self.codes[i], self.calls[i]
        reloc = None
        if self.rel is not None:
            index = self.indices[i]
            info_offset = self.rel.sh_offset + index * self.rel.sh_entsize + self.info_size
            reloc = Reloc(self.rel.name, index, info_offset, self.info_size, self.r_info, self.call_info)
        return Site(
            function,
            self.section.name,
            start,
            self.section.sh_offset + start,
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
            group.site(i, self.function_at(group.section, start), self.x86_64)
            for group in self.groups
            for i, start in enumerate(group.starts)
        ]
        sites.sort(key=attrgetter("file_offset"))
        return tuple(sites)


@dataclass(frozen=True)
class _Table:
    """The columns of one relocation table."""

    rel: Section
    view: memoryview
    word: int  # bytes in each field
    r_offset: list[int]
    r_info: list[int]

    @cached_property
    def values(self) -> dict[int, None]:
        """Each r_info value once, in table order."""
        return dict.fromkeys(self.r_info)

    @cached_property
    def r_addend(self) -> list[int] | None:
        """None on REL, whose addends are in the bytes relocated."""
        if self.rel.sh_type != SHT_RELA:
            return None
        return words(self.view, self.word, signed=True)[2::3].tolist()

    def holding(self, r_info: int) -> list[int]:
        """The index of every entry whose r_info is `r_info`."""
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
            self._add_relocated(applied, targets)
        self._add_recorded()
        return tuple(self.groups)

    def _add_relocated(self, applied: list[tuple[Section, Section]], targets: dict[int, str]) -> None:
        elf = self.elf
        for rel, _ in applied:
            if rel.sh_link != elf.symtab.index:
                raise elf.fail(f"relocation section {rel.name} links to section [{rel.sh_link}], not the symbol table")
        tables = [(self._table(rel), sec) for rel, sec in applied]
        live = [group for table, sec in tables for group in self._live_groups(table, sec, targets)]
        self.groups += live
        live_symbols = {group.r_info >> self._shift for group in live}
        live_types: dict[Form, set[int]] = {}
        for group in live:
            live_types.setdefault(group.form, set()).add(group.r_info & self._type_mask)
        for table, sec in tables:
            self.groups += self._dormant_groups(table, sec, targets, live_symbols, live_types)

    # -- relocation tables -------------------------------------------------------------

    def _applies_to(self, rel: Section) -> Section:
        if not 0 < rel.sh_info < len(self.elf.sections):
            raise self.elf.fail(
                f"relocation section {rel.name} applies to section [{rel.sh_info}], which does not exist, sh_info"
            )
        return self.elf.sections[rel.sh_info]

    def _table(self, rel: Section) -> _Table:
        """The table's columns, its entry layout and every symbol index checked."""
        elf, word = self.elf, self._word
        rela = rel.sh_type == SHT_RELA
        entsize = word * (3 if rela else 2)
        if rel.sh_entsize != entsize:
            raise elf.fail(f"relocation section {rel.name} has sh_entsize {rel.sh_entsize}, expected {entsize}")
        if rel.sh_size % entsize:
            raise elf.fail(f"relocation section {rel.name} size {rel.sh_size:#x} is not a multiple of {entsize}")
        view = elf.section_data(rel)
        columns = 3 if rela else 2
        unsigned = words(view, word)
        r_info = unsigned[1::columns].tolist()
        nsyms = len(elf.symbols)
        if r_info and max(r_info) >> self._shift >= nsyms:
            index = next(i for i, info in enumerate(r_info) if info >> self._shift >= nsyms)
            raise elf.fail(
                f"relocation {rel.name}[{index}] names symbol {r_info[index] >> self._shift}, past the end of the symbol table ({nsyms})"
            )
        return _Table(rel, view, word, unsigned[0::columns].tolist(), r_info)

    # -- sites -------------------------------------------------------------------------

    def _group(
        self,
        table: _Table,
        sec: Section,
        form: Form,
        target: str | None,
        call: bytes | None,
        starts: list[int],
        indices: Sequence[int],
        r_info: int = 0,
        call_info: int = 0,
    ) -> SiteGroup:
        """A group of sites at `starts` in `sec`, their entries at `indices`, each checked to fit."""
        length = SITE_LENGTH[form]
        if starts and (sec.sh_type == SHT_NOBITS or min(starts) < 0 or max(starts) + length > sec.sh_size):
            # Something is wrong: find the first entry it is wrong for, in table order.
            for start, index in sorted(zip(starts, indices, strict=True), key=itemgetter(1)):
                where = f"relocation {table.rel.name}[{index}]"
                if sec.sh_type == SHT_NOBITS:
                    raise self.elf.fail(
                        f"site {sec.where(start)} is in {sec.name}, which has no file bytes (SHT_NOBITS), {where}"
                    )
                if start < 0 or start + length > sec.sh_size:
                    raise self.elf.fail(
                        f"site {sec.where(start)} of {length} bytes does not fit in {sec.name} ({sec.sh_size:#x} bytes), {where}"
                    )
        data, base = self.elf.data, sec.sh_offset
        codes = tuple([data[at : at + length] for at in [base + start for start in starts]])
        rel = table.rel if form is not Form.RECORDED else None
        return SiteGroup(
            sec,
            form,
            target,
            tuple(starts),
            codes,
            (call,) * len(starts),
            rel,
            tuple(indices) if rel else (),
            r_info,
            call_info,
        )

    def _expected_call(self, rela: bool, form: Form) -> bytes:
        # RELA keeps the addend in the entry, and gas leaves the displacement 0;
        # REL keeps it in the displacement itself.
        return call_bytes(form, 0 if rela else _REL_ADDEND[form])

    def _live_groups(self, table: _Table, sec: Section, targets: dict[int, str]) -> list[SiteGroup]:
        """One group per r_info value against a target: one symbol, one type, so one form and one call."""
        groups = []
        for r_info in table.values:
            symbol, r_type = r_info >> self._shift, r_info & self._type_mask
            if r_info == 0 or symbol not in targets:
                continue
            indices = table.holding(r_info)
            form = _FORM_OF[self.x86_64].get(r_type)
            if form is None:
                raise VerifyError(
                    self.elf.path,
                    f"{reloc_type_name(self.x86_64, r_type)} against {targets[symbol]} at {sec.where(table.r_offset[indices[0]])} is not a call ftpatch knows, relocation {table.rel.name}[{indices[0]}]",
                )
            disp = disp_offset(form)
            starts = [table.r_offset[i] - disp for i in indices]
            call = self._expected_call(table.r_addend is not None, form)
            groups.append(self._group(table, sec, form, targets[symbol], call, starts, indices, r_info, r_info))
        return groups

    def _dormant_groups(
        self,
        table: _Table,
        sec: Section,
        targets: dict[int, str],
        live_symbols: set[int],
        live_types: dict[Form, set[int]],
    ) -> list[SiteGroup]:
        """The sites ftpatch made nops: entries with r_info 0 (and, on RELA, addend -4)
        whose displacement ends where a known nop ends. One group per form."""
        if sec.sh_type == SHT_NOBITS or 0 not in table.values:
            return []
        zeroed = table.holding(0)
        if table.r_addend is not None:
            zeroed = [i for i in zeroed if table.r_addend[i] == _RELA_CALL_ADDEND]
        by_form: dict[Form, list[int]] = {}
        for index in zeroed:
            form = self._dormant_form(table, index, sec)
            if form is not None:
                by_form.setdefault(form, []).append(index)
            elif table.r_addend is not None:
                self.strays.append(
                    f"{sec.where(table.r_offset[index])}: relocation {table.rel.name}[{index}] has r_info 0 and addend -4, but no known nop ends at its displacement"
                )
        groups = []
        for form, indices in by_form.items():
            index, r_offset = indices[0], table.r_offset[indices[0]]
            entry = f"relocation {table.rel.name}[{index}]"
            symbol = self._restore_symbol(targets, live_symbols, sec.where(r_offset), entry)
            types = live_types.get(form, set())
            if len(types) > 1:
                names = ", ".join(sorted(reloc_type_name(self.x86_64, t) for t in types))
                raise VerifyError(
                    self.elf.path,
                    f"site {sec.where(r_offset - disp_offset(form))} could be restored as any of {names}, {entry}",
                )
            r_type = next(iter(types)) if types else _DEFAULT_TYPE[self.x86_64][form]
            starts = [table.r_offset[i] - disp_offset(form) for i in indices]
            call = self._expected_call(table.r_addend is not None, form)
            groups.append(
                self._group(
                    table, sec, form, targets[symbol], call, starts, indices, 0, (symbol << self._shift) | r_type
                )
            )
        return groups

    def _dormant_form(self, table: _Table, index: int, sec: Section) -> Form | None:
        """The call form whose nop ends where this entry's displacement ends, if any."""
        r_offset = table.r_offset[index]
        if r_offset < 1 or r_offset + 4 > sec.sh_size:
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
                f"site ending at {sec.where(r_offset + 4)} may be a 5-byte or a 6-byte nop, and decoding {function.name if function else 'its function'} does not tell, relocation {table.rel.name}[{index}]",
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
        rels = [s for s in elf.sections if s.sh_type in (SHT_REL, SHT_RELA) and s.sh_info == loc.index]
        known: dict[int, set[int]] = {}
        for group in self.groups:
            known.setdefault(group.section.index, set()).update(group.starts)
        words_ = elf.section_data(loc)
        for rel in rels:
            table = self._table(rel)
            if table.r_addend is not None:
                addends = table.r_addend
            else:
                addends = [
                    int.from_bytes(words_[r_offset : r_offset + self._word], "little", signed=True)
                    for r_offset in table.r_offset
                ]
            symbols = [r_info >> self._shift for r_info in table.r_info]
            places = {symbol: elf.symbols.place(symbol) for symbol in set(symbols)}
            by_section: dict[int, tuple[list[int], list[int]]] = {}
            for index, (symbol, addend) in enumerate(zip(symbols, addends, strict=True)):
                shndx, st_value = places[symbol]
                start = st_value + addend
                if 0 < shndx < len(elf.sections) and start not in known.get(shndx, ()):
                    starts, indices = by_section.setdefault(shndx, ([], []))
                    starts.append(start)
                    indices.append(index)
            for shndx, (starts, indices) in by_section.items():
                self.groups.append(self._group(table, elf.sections[shndx], Form.RECORDED, None, None, starts, indices))


def scan_elf(elf: ElfFile, targets: Iterable[str] = DEFAULT_TARGETS, base: int = 0) -> ScanResult:
    if elf.e_type != ET_REL:
        from .linked import scan_linked

        groups, function_at, blind = scan_linked(elf, targets)
        return ScanResult(
            elf.path, elf.machine, elf.type_name, elf.x86_64, elf.data, groups, base, (), blind, function_at
        )
    scanner = _Scanner(elf, targets)
    groups = scanner.run()

    def function_at(section: Section, offset: int) -> str | None:
        symbol = elf.symbols.function_at(section.index, offset)
        return symbol.name if symbol else None

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
        function_at,
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


def select(
    sites: Sequence[Site], only: Sequence[str] = (), exclude: Sequence[str] = ()
) -> tuple[list[Site], list[Site]]:
    """Split sites into (chosen, filtered out) by shell globs over function names."""
    kept, filtered = [], []
    for site in sites:
        (kept if chosen(site.function, only, exclude) else filtered).append(site)
    return kept, filtered


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
    "select",
]
