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

import bisect
import fnmatch
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

from .archive import is_archive, members
from .elf import ELFCLASS64, ET_REL, SHT_NOBITS, SHT_REL, SHT_RELA, ElfFile, Section, Symbol, read_input
from .errors import InputError, VerifyError
from .x86 import SITE_LENGTH, Form, call_bytes, disp_offset, is_boundary, known_nop

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
class ScanResult:
    path: str
    machine: str
    type: str
    x86_64: bool
    data: bytes
    sites: tuple[Site, ...]
    base: int = 0  # where this ELF file starts in the file read: an archive member's offset
    # Zeroed relocations with a call's addend whose bytes are no known nop: `call` refuses them.
    strays: tuple[str, ...] = ()
    # Why nop'd sites of this (linked, stripped) file cannot be found; `call` refuses it. "" when they can.
    blind: str = ""


@dataclass(frozen=True)
class _Entry:
    rel: Section
    index: int
    r_offset: int
    r_info: int
    r_addend: int | None  # None on REL


def _reloc_layout(elf: ElfFile, rel: Section) -> struct.Struct:
    """The entry layout of a relocation section, checked against its header."""
    is64 = elf.elfclass == ELFCLASS64
    fmt = {(True, True): "<QQq", (True, False): "<QQ", (False, True): "<IIi", (False, False): "<II"}
    layout = struct.Struct(fmt[(is64, rel.sh_type == SHT_RELA)])
    if rel.sh_entsize != layout.size:
        raise elf.fail(f"relocation section {rel.name} has sh_entsize {rel.sh_entsize}, expected {layout.size}")
    if rel.sh_size % layout.size:
        raise elf.fail(f"relocation section {rel.name} size {rel.sh_size:#x} is not a multiple of {layout.size}")
    return layout


class _Scanner:
    def __init__(self, elf: ElfFile, targets: Iterable[str]) -> None:
        self.elf = elf
        self.x86_64 = elf.x86_64
        self.target_names = frozenset(targets)
        self.sites: list[Site] = []
        self.strays: list[str] = []
        self._word = 8 if elf.elfclass == ELFCLASS64 else 4  # bytes in r_offset, r_info
        self._shift = 32 if self._word == 8 else 8  # r_info >> shift is r_sym
        self._type_mask = (1 << self._shift) - 1
        self._functions: dict[int, tuple[list[int], list[tuple[int, int, int]]]] | None = None

    def run(self) -> tuple[Site, ...]:
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
        self.sites.sort(key=lambda s: s.file_offset)
        return tuple(self.sites)

    def _add_relocated(self, applied: list[tuple[Section, Section]], targets: dict[int, str]) -> None:
        elf = self.elf
        live: list[tuple[_Entry, Section]] = []
        dormant: list[tuple[_Entry, Section]] = []
        for rel, sec in applied:
            if rel.sh_link != elf.symtab.index:
                raise elf.fail(f"relocation section {rel.name} links to section [{rel.sh_link}], not the symbol table")
            for entry in self._entries(rel, targets):
                (dormant if entry.r_info == 0 else live).append((entry, sec))
        live_types: dict[Form, set[int]] = {}
        live_symbols: set[int] = set()
        for entry, sec in live:
            site = self._live_site(entry, sec, targets)
            self.sites.append(site)
            live_symbols.add(entry.r_info >> self._shift)
            if entry.r_info & self._type_mask:
                live_types.setdefault(site.form, set()).add(entry.r_info & self._type_mask)
        for entry, sec in dormant:
            site = self._dormant_site(entry, sec, targets, live_symbols, live_types)
            if site is not None:
                self.sites.append(site)

    # -- relocation tables -------------------------------------------------------------

    def _applies_to(self, rel: Section) -> Section:
        if not 0 < rel.sh_info < len(self.elf.sections):
            raise self.elf.fail(
                f"relocation section {rel.name} applies to section [{rel.sh_info}], which does not exist, sh_info"
            )
        return self.elf.sections[rel.sh_info]

    def _table(self, rel: Section) -> Iterator[tuple[int, tuple[int, ...]]]:
        """(index, (r_offset, r_info[, r_addend])) of every entry, its symbol index checked."""
        nsyms, shift = len(self.elf.symbols), self._shift
        for index, fields in enumerate(_reloc_layout(self.elf, rel).iter_unpack(self.elf.section_data(rel))):
            if fields[1] >> shift >= nsyms:
                raise self.elf.fail(
                    f"relocation {rel.name}[{index}] names symbol {fields[1] >> shift}, past the end of the symbol table ({nsyms})"
                )
            yield index, fields

    def _entries(self, rel: Section, targets: dict[int, str]) -> list[_Entry]:
        """Entries against a target symbol, and entries whose r_info is all zero."""
        shift = self._shift
        return [
            _Entry(rel, index, fields[0], fields[1], fields[2] if len(fields) == 3 else None)
            for index, fields in self._table(rel)
            if fields[1] == 0 or fields[1] >> shift in targets
        ]

    # -- sites -------------------------------------------------------------------------

    def _site_bytes(self, entry: _Entry, sec: Section, start: int, length: int) -> bytes:
        if sec.sh_type == SHT_NOBITS:
            raise self.elf.fail(
                f"site {sec.where(start)} is in {sec.name}, which has no file bytes (SHT_NOBITS), relocation {entry.rel.name}[{entry.index}]",
            )
        if start < 0 or start + length > sec.sh_size:
            raise self.elf.fail(
                f"site {sec.where(start)} of {length} bytes does not fit in {sec.name} ({sec.sh_size:#x} bytes), relocation {entry.rel.name}[{entry.index}]",
            )
        return bytes(self.elf.data[sec.sh_offset + start : sec.sh_offset + start + length])

    def _reloc(self, entry: _Entry, call_info: int) -> Reloc:
        size = self._word
        info_offset = entry.rel.sh_offset + entry.index * entry.rel.sh_entsize + size
        return Reloc(entry.rel.name, entry.index, info_offset, size, entry.r_info, call_info)

    def _expected_call(self, entry: _Entry, form: Form) -> bytes:
        # RELA keeps the addend in the entry, and gas leaves the displacement 0;
        # REL keeps it in the displacement itself.
        return call_bytes(form, 0 if entry.r_addend is not None else _REL_ADDEND[form])

    def _make_site(self, entry: _Entry, sec: Section, form: Form, target: str, call_info: int) -> Site:
        start = entry.r_offset - disp_offset(form)
        code = self._site_bytes(entry, sec, start, SITE_LENGTH[form])
        call = self._expected_call(entry, form)
        state = State.CALL if code == call else State.NOP if known_nop(code, self.x86_64) else State.OTHER
        return Site(
            self._function_at(sec, start),
            sec.name,
            start,
            sec.sh_offset + start,
            form,
            target,
            state,
            code,
            call,
            self._reloc(entry, call_info),
        )

    def _live_site(self, entry: _Entry, sec: Section, targets: dict[int, str]) -> Site:
        sym, r_type = entry.r_info >> self._shift, entry.r_info & self._type_mask
        form = _FORM_OF[self.x86_64].get(r_type)
        if form is None:
            where = sec.where(entry.r_offset)
            raise VerifyError(
                self.elf.path,
                f"{reloc_type_name(self.x86_64, r_type)} against {targets[sym]} at {where} is not a call ftpatch knows, relocation {entry.rel.name}[{entry.index}]",
            )
        return self._make_site(entry, sec, form, targets[sym], entry.r_info)

    def _dormant_site(
        self,
        entry: _Entry,
        sec: Section,
        targets: dict[int, str],
        live_symbols: set[int],
        live_types: dict[Form, set[int]],
    ) -> Site | None:
        if sec.sh_type == SHT_NOBITS:
            return None
        if entry.r_addend is not None and entry.r_addend != _RELA_CALL_ADDEND:
            return None
        form = self._dormant_form(entry, sec)
        if form is None:
            if entry.r_addend is not None:
                self.strays.append(
                    f"{sec.where(entry.r_offset)}: relocation {entry.rel.name}[{entry.index}] has r_info 0 and addend -4, but no known nop ends at its displacement"
                )
            return None
        symbol = self._restore_symbol(entry, sec, targets, live_symbols)
        types = live_types.get(form, set())
        if len(types) > 1:
            names = ", ".join(sorted(reloc_type_name(self.x86_64, t) for t in types))
            raise VerifyError(
                self.elf.path,
                f"site {sec.where(entry.r_offset - disp_offset(form))} could be restored as any of {names}, relocation {entry.rel.name}[{entry.index}]",
            )
        r_type = next(iter(types)) if types else _DEFAULT_TYPE[self.x86_64][form]
        return self._make_site(entry, sec, form, targets[symbol], (symbol << self._shift) | r_type)

    def _dormant_form(self, entry: _Entry, sec: Section) -> Form | None:
        """The call form whose nop ends where this entry's displacement ends, if any."""
        end = entry.r_offset + 4
        if end > sec.sh_size or entry.r_offset < 1:
            return None
        code = self.elf.data[sec.sh_offset : sec.sh_offset + end]
        six = Form.GOTPCREL if self.x86_64 else Form.GOT_EBX
        fits = [
            form
            for form in (Form.REL32, six)
            if entry.r_offset >= disp_offset(form) and known_nop(bytes(code[end - SITE_LENGTH[form] :]), self.x86_64)
        ]
        if len(fits) < 2:
            return fits[0] if fits else None
        function = self._function_symbol(sec, entry.r_offset)
        if function is not None:
            text = bytes(code[function.st_value :])
            fits = [f for f in fits if is_boundary(text, self.x86_64, 0, end - SITE_LENGTH[f] - function.st_value)]
        if len(fits) != 1:
            raise VerifyError(
                self.elf.path,
                f"site ending at {sec.where(end)} may be a 5-byte or a 6-byte nop, and decoding {function.name if function else 'its function'} does not tell, relocation {entry.rel.name}[{entry.index}]",
            )
        return fits[0]

    def _restore_symbol(self, entry: _Entry, sec: Section, targets: dict[int, str], live_symbols: set[int]) -> int:
        candidates = set(targets) if len(targets) == 1 else live_symbols & set(targets)
        if len(candidates) != 1:
            names = ", ".join(sorted(targets.values()))
            raise VerifyError(
                self.elf.path,
                f"the nop at {sec.where(entry.r_offset)} could have called any of {names}, relocation {entry.rel.name}[{entry.index}]",
            )
        return next(iter(candidates))

    def _mcount_loc(self) -> Section | None:
        return next((s for s in self.elf.sections if s.name == "__mcount_loc"), None)

    def _add_recorded(self) -> None:
        """Sites gcc -mnop-mcount left as nops, known only from __mcount_loc's relocations."""
        loc = self._mcount_loc()
        if loc is None:
            return
        rels = [s for s in self.elf.sections if s.sh_type in (SHT_REL, SHT_RELA) and s.sh_info == loc.index]
        known = {(s.section, s.offset) for s in self.sites}
        words = self.elf.section_data(loc)
        for rel in rels:
            for index, fields in self._table(rel):
                symbol = self.elf.symbols[fields[1] >> self._shift]
                if not 0 < symbol.st_shndx < len(self.elf.sections):
                    continue
                sec = self.elf.sections[symbol.st_shndx]
                addend = (
                    fields[2]
                    if len(fields) == 3
                    else int.from_bytes(words[fields[0] : fields[0] + self._word], "little", signed=True)
                )
                start = symbol.st_value + addend
                if (sec.name, start) in known:
                    continue
                entry = _Entry(rel, index, fields[0], fields[1], None)
                code = self._site_bytes(entry, sec, start, 5)
                state = State.NOP if known_nop(code, self.x86_64) else State.OTHER
                self.sites.append(
                    Site(
                        self._function_at(sec, start),
                        sec.name,
                        start,
                        sec.sh_offset + start,
                        Form.RECORDED,
                        None,
                        state,
                        code,
                        None,
                        None,
                    )
                )

    # -- functions ---------------------------------------------------------------------

    def _function_symbol(self, sec: Section, offset: int) -> Symbol | None:
        if self._functions is None:
            self._functions = {
                shndx: ([f[0] for f in funcs], funcs) for shndx, funcs in self.elf.symbols.functions().items()
            }
        starts, funcs = self._functions.get(sec.index, ([], []))
        i = bisect.bisect_right(starts, offset) - 1
        if i >= 0 and offset < funcs[i][0] + max(funcs[i][1], 1):
            return self.elf.symbols[funcs[i][2]]
        return None

    def _function_at(self, sec: Section, offset: int) -> str | None:
        symbol = self._function_symbol(sec, offset)
        return symbol.name if symbol else None


def scan_elf(elf: ElfFile, targets: Iterable[str] = DEFAULT_TARGETS, base: int = 0) -> ScanResult:
    if elf.e_type != ET_REL:
        from .linked import scan_linked

        sites, blind = scan_linked(elf, targets)
        return ScanResult(elf.path, elf.machine, elf.type_name, elf.x86_64, elf.data, sites, base, (), blind)
    scanner = _Scanner(elf, targets)
    sites = scanner.run()
    return ScanResult(elf.path, elf.machine, elf.type_name, elf.x86_64, elf.data, sites, base, tuple(scanner.strays))


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


def select(
    sites: Sequence[Site], only: Sequence[str] = (), exclude: Sequence[str] = ()
) -> tuple[list[Site], list[Site]]:
    """Split sites into (chosen, filtered out) by shell globs over function names."""
    chosen, filtered = [], []
    for site in sites:
        name = site.function or ""
        keep = (not only or any(fnmatch.fnmatchcase(name, g) for g in only)) and not any(
            fnmatch.fnmatchcase(name, g) for g in exclude
        )
        (chosen if keep else filtered).append(site)
    return chosen, filtered


__all__ = [
    "DEFAULT_TARGETS",
    "InputError",
    "Reloc",
    "ScanResult",
    "Site",
    "State",
    "scan",
    "scan_data",
    "scan_elf",
    "scan_path",
    "select",
]
