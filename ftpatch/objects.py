"""Objects: find the profiling call sites of a relocatable object through its relocations.

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

from collections.abc import Iterable, Sequence
from functools import partial
from operator import itemgetter

from .elf import SHT_NOBITS, SHT_REL, SHT_RELA, ElfFile, Relocations, Section
from .errors import FtpatchError, InputError, VerifyError
from .sites import ScanResult, SiteGroup
from .x86 import I386, SITE_LENGTH, X86_64, Form, call_bytes, disp_offset, is_boundary, nops

# The type gcc 12 / gas 2.40 emit for a form.
_DEFAULT_TYPE = {
    X86_64.name: {Form.REL32: 4, Form.GOTPCREL: 41},
    I386.name: {Form.REL32: 2, Form.GOT_EBX: 43},
}


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
        tuple(scanner.strays),
        function_at=partial(_function_at, elf),
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
        self.groups: list[SiteGroup] = []
        self.strays: list[str] = []

    def run(self) -> tuple[SiteGroup, ...]:
        elf = self.elf
        relocs = [s for s in elf.sections if s.sh_type in (SHT_REL, SHT_RELA)]
        applied: list[tuple[Section, Section | None]] = [
            (rel, sec) for rel in relocs if (sec := elf.applied_to(rel)).is_exec
        ]
        targets = {}
        if applied:
            targets = elf.symbols.named(self.target_names)
        if targets:
            self._add_relocated(self._read(applied), targets)
        self._add_recorded()
        return tuple(self.groups)

    def _read(self, tables: Sequence[tuple[Section, Section | None]]) -> Relocations:
        for rel, _ in tables:
            if rel.sh_link != self.elf.symtab.index:
                raise self.elf.fail(
                    f"relocation section {rel.name} links to section [{rel.sh_link}], not the symbol table"
                )
        return self.elf.relocations(tables, len(self.elf.symbols))

    def _add_relocated(self, entries: Relocations, targets: dict[int, str]) -> None:
        live = self._live_groups(entries, targets)
        self.groups += live
        live_symbols = {self.arch.r_sym(group.r_info) for group in live}
        live_types: dict[Form, set[int]] = {}
        for group in live:
            live_types.setdefault(group.form, set()).add(self.arch.r_type(group.r_info))
        self.groups += self._dormant_groups(entries, targets, live_symbols, live_types)

    # -- sites -------------------------------------------------------------------------

    def _group(
        self, entries: Relocations, positions: Sequence[int], form: Form, target: str, r_info: int, call_info: int
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

    def _expected_call(self, rela: bool, form: Form) -> bytes:
        # RELA keeps the addend in the entry, and gas leaves the displacement 0;
        # REL keeps it in the displacement itself.
        return call_bytes(form, 0 if rela else self.arch.call_addend(form))

    def _live_groups(self, entries: Relocations, targets: dict[int, str]) -> list[SiteGroup]:
        """One group per r_info value against a target: one symbol and one type, so one form.

        Every value is checked before any group is made, so that the error
        reported is the one of the first bad entry in table order.
        """
        groups: list[SiteGroup] = []
        problems: list[tuple[int, FtpatchError]] = []
        for r_info in entries.values:
            symbol, r_type = self.arch.r_sym(r_info), self.arch.r_type(r_info)
            if r_info == 0 or symbol not in targets:
                continue
            positions = entries.holding(r_info)
            form = self.arch.call_forms.get(r_type)
            if form is None:
                i = positions[0]
                problems.append(
                    (
                        i,
                        VerifyError(
                            self.elf.path,
                            f"{self.arch.reloc_name(r_type)} against {targets[symbol]} at {entries.section(i).where(entries.r_offset[i])} is not a call ftpatch knows, relocation {entries.name(i)}",
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
        entries: Relocations,
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
            if addend is not None and addend != self.arch.call_addend(Form.REL32):
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
                names = ", ".join(sorted(self.arch.reloc_name(t) for t in types))
                raise VerifyError(
                    self.elf.path,
                    f"site {where(entries.r_offset[i] - disp_offset(form))} could be restored as any of {names}, {entry}",
                )
            r_type = next(iter(types)) if types else _DEFAULT_TYPE[self.arch.name][form]
            call_info = (symbol << self.arch.r_sym_shift) | r_type
            group = self._group(entries, positions, form, targets[symbol], 0, call_info)
            assert group is not None  # _dormant_form found each nop inside its section
            groups.append(group)
        return groups

    def _dormant_form(self, entries: Relocations, i: int) -> Form | None:
        """The call form whose nop ends where this entry's displacement ends, if any."""
        sec, r_offset = entries.section(i), entries.r_offset[i]
        if sec.sh_type == SHT_NOBITS or r_offset < 1 or r_offset + 4 > sec.sh_size:
            return None
        data, end = self.elf.data, sec.sh_offset + r_offset + 4
        six = self.arch.pic_form
        fits = [
            form
            for form in (Form.REL32, six)
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
