"""Objects: find the profiling call sites of a relocatable object through its relocations.

A site is live when a relocation against a target symbol (mcount, _mcount,
__fentry__ or a --symbol) applies to it (relocated.py); a nop'd site keeps its
entry, made harmless, with what restores it (nopped.py); gcc -mnop-mcount's
sites are known only from __mcount_loc. Each pass returns what it found, and
the groups are built here.

Speed: the relocation tables are decoded together, as columns of one array,
and sites are kept as SiteGroups, columns again; a Site object costs more to
make (a microsecond) than finding its site does. On an object of 20,000 sites
the scan takes about 15 ms.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from functools import partial
from operator import itemgetter

from .elf import (
    SHN_UNDEF,
    SHT_NOBITS,
    SHT_REL,
    SHT_RELA,
    STT_FUNC,
    STT_GNU_IFUNC,
    STT_NOTYPE,
    ElfFile,
    Relocations,
    Section,
)
from .errors import InputError, VerifyError
from .nopped import Strays, nop_entry, nopped, patchable_records, record_clash, restorable, tag
from .patchable import SECTION, Place, place
from .relocated import SiteEntries, call_entry, live
from .sites import (
    DEFAULT_TARGETS,
    RECURSIVE,
    Action,
    Checks,
    Finding,
    Located,
    Redirect,
    ScanResult,
    SiteGroup,
    at_entry,
)
from .x86 import (
    ENDBR,
    LONG_PATCHABLE_NOPS,
    SITE_LENGTH,
    TAIL_OF,
    Form,
    call_bytes,
    disp_offset,
    filled,
    find_marked_nops,
    find_nops,
    ftpatch_nops,
    instruction_starts,
    written_by_ftpatch,
)

# gcc -flto writes GIMPLE into .gnu.lto_* sections, and the link compiles it to machine code (docs/facts.md).
SLIM_LTO = (
    "a slim LTO object (gcc -flto): it holds GIMPLE, not machine code, so no profiling call is here to patch; "
    "the link compiles it, so patch the linked program"
)
FAT_LTO = (
    "a fat LTO object (gcc -flto -ffat-lto-objects): a link with -flto compiles its GIMPLE again and does not use "
    "this machine code, so patching it changes nothing in that program; patch the linked program"
)
UNCALLED = (
    "names {names}, but no relocation calls it: if `ftpatch call --target NAME` pointed its sites at another "
    "function, name that one with --symbol NAME (or --target NAME) to find them"
)
Tables = tuple[tuple[Section, Section | None], ...]
# Why a nop of ftpatch's has no entry left, and what works (docs/facts.md: gold's -r drops NONE entries).
_LOST = (
    ": a partial link by gold (`ld.gold -r`) drops the NONE entries that say what call each nop was; run "
    "`ftpatch call` on the objects before the partial link, or link them with bfd (`ld -r`) or lld, which keep them"
)


def scan_object(path: str, elf: ElfFile, targets: Iterable[str], base: int = 0) -> ScanResult:
    lto = _lto(elf)
    if lto == "slim":
        return ScanResult(
            path,
            elf.type_name,
            elf.arch,
            elf.data,
            (),
            Located.NOWHERE,
            (Finding(SLIM_LTO, frozenset(Action)),),
            base=base,
        )
    tables: Tables = tuple(
        (rel, sec)
        for rel in elf.sections
        if rel.sh_type in (SHT_REL, SHT_RELA) and (sec := elf.applied_to(rel)).is_exec
    )
    symbols = elf.symbols.named(frozenset(targets)) if tables else {}
    groups: list[SiteGroup] = []
    strays: Strays = {}
    patchable, too_small = _patchable(elf) if elf.section_named(SECTION) is not None else ([], [])
    if symbols:
        entries = _read(elf, tables)
        found, problems = live(elf, entries, symbols)
        places = {(sec.shndx, p.site): p.code for sec, p in patchable}
        records, record_entries = patchable_records(elf, entries, places)
        kept, strays = nopped(elf, entries, symbols, records, record_entries)
        groups = _groups(elf, entries, symbols, [*found, *kept], problems)
        if patchable:
            groups = _compiler_nops(elf, groups, places, records)
    known = {(section.shndx, start) for g in groups for section, start in zip(g.sections, g.starts, strict=True)}
    listed = [(sec, start) for sec, start in _listed(elf) if (sec.shndx, start) not in known]
    if listed:
        groups.append(_recorded(elf, listed))
    unfilled = [(sec, p) for sec, p in patchable if (sec.shndx, p.site) not in known]
    if unfilled:
        groups.append(_patchable_group(unfilled))
    checks = ObjectChecks(elf, symbols, tables, tuple(groups), strays)
    findings: tuple[Finding, ...] = (Finding(FAT_LTO),) if lto else ()
    if too_small:
        more = f" (and {len(too_small) - 1} more functions)" if len(too_small) > 1 else ""
        findings += (Finding(f"has a site that no call fits: {too_small[0]}{more}", frozenset({Action.CALL})),)
    # gas makes a symbol for a function only where something refers to it: the compiler's profiling target, when
    # nothing does any more, lost its calls to a --target (which leaves its own symbol where a run added it).
    uncalled = sorted({name for name in symbols.values() if name in DEFAULT_TARGETS})
    if uncalled and not groups and not strays:
        findings += (Finding(UNCALLED.format(names=", ".join(uncalled))),)
    return ScanResult(
        path, elf.type_name, elf.arch, elf.data, tuple(groups), Located.RELOCATIONS, findings, checks, base
    )


def _lto(elf: ElfFile) -> str:
    """What kind of gcc -flto object `elf` is: "slim", "fat", or "" for none. A slim one has no machine
    code at all, and gcc 10 and later also mark it with the symbol __gnu_lto_slim."""
    if not any(s.name.startswith(".gnu.lto_") for s in elf.sections):
        return ""
    code = any(s.is_exec and s.sh_type != SHT_NOBITS and s.sh_size for s in elf.sections)
    return "slim" if not code or (elf.has_symtab and elf.symbols.named(["__gnu_lto_slim"])) else "fat"


def _read(elf: ElfFile, tables: Sequence[tuple[Section, Section | None]]) -> Relocations:
    for rel, _ in tables:
        if rel.sh_link != elf.symtab.shndx:
            raise elf.fail(f"relocation section {rel.name} links to section [{rel.sh_link}], not the symbol table")
    return elf.relocations(tables, len(elf.symbols))


def _groups(
    elf: ElfFile,
    entries: Relocations,
    symbols: Mapping[int, str],
    found: Sequence[SiteEntries],
    problems: list[tuple[int, InputError]],
) -> list[SiteGroup]:
    """A SiteGroup for each set of entries. Every entry is checked before any group is kept: of the bad
    ones (`problems`, and those whose site does not fit in its section's bytes), the first in table order
    is refused."""
    groups, misfits = [], list(problems)
    for e in found:
        kind = at_entry(symbols[e.symbol])
        for entry, part in _by_place(elf, entries, e) if kind is None else ((kind, e),):
            group = _group(elf, entries, symbols, part, entry)
            if group is None:
                misfits.append(_misfit(elf, entries, part))
            else:
                groups.append(group)
    if misfits:
        raise min(misfits, key=itemgetter(0))[1]
    return groups


def _by_place(elf: ElfFile, entries: Relocations, e: SiteEntries) -> list[tuple[bool, SiteEntries]]:
    """The entries of a target whose name does not say where its calls are (a --symbol, a --target), split
    into those at a function's entry (its first instruction, or the one after its endbr) and the others."""
    disp, data, symbols = disp_offset(e.form), elf.data, elf.symbols if elf.has_symtab else None
    parts: dict[bool, list[int]] = {True: [], False: []}
    for i in e.positions:
        sec, start = entries.section(i), entries.r_offset[i] - disp
        function = symbols.function_at(sec.shndx, start) if symbols is not None else None
        at = sec.sh_offset + start
        entry = function is not None and (
            start == function.st_value or (start == function.st_value + 4 and data[at - 4 : at] in ENDBR)
        )
        parts[entry].append(i)
    return [(entry, replace(e, positions=positions)) for entry, positions in parts.items() if positions]


def _group(
    elf: ElfFile, entries: Relocations, symbols: Mapping[int, str], e: SiteEntries, entry: bool
) -> SiteGroup | None:
    """The sites of these entries; None if one does not fit in its section's bytes."""
    arch, data, positions = elf.arch, elf.data, e.positions
    disp, length, n = disp_offset(e.form), SITE_LENGTH[e.form], len(positions)
    tables = [entries.table[i] for i in positions]
    starts = [entries.r_offset[i] - disp for i in positions]
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
    name = symbols[e.symbol]
    call = call_bytes(e.form, 0 if arch.rela else arch.call_addend(e.form))

    return SiteGroup(
        e.form,
        name,
        tuple(sections),
        tuple(starts),
        tuple(codes),
        (call,) * n,
        tuple(rels),
        tuple(indices),
        e.held,
        call_entry(elf, e.symbol, e.r_type),
        nop_entry(elf, e.r_type, name),
        tag(elf, e.form, e.r_type),
        entry,
        e.doubt,
    )


def _misfit(elf: ElfFile, entries: Relocations, e: SiteEntries) -> tuple[int, InputError]:
    """The first of these entries whose site does not fit in its section's bytes, and why."""
    disp, length = disp_offset(e.form), SITE_LENGTH[e.form]
    for i in e.positions:
        sec, start = entries.section(i), entries.r_offset[i] - disp
        if sec.sh_type == SHT_NOBITS:
            return i, elf.fail(
                f"site {sec.where(start)} is in {sec.name}, which has no file bytes (SHT_NOBITS), relocation {entries.name(i)}"
            )
        if start < 0 or start + length > sec.sh_size:
            return i, elf.fail(
                f"site {sec.where(start)} of {length} bytes does not fit in {sec.name} ({sec.sh_size:#x} bytes), relocation {entries.name(i)}"
            )
    raise AssertionError("_misfit called for entries that fit")


def _listed(elf: ElfFile) -> list[tuple[Section, int]]:
    """(section, offset) of every site __mcount_loc's relocations list, each checked to lie in file bytes."""
    listed = []
    for sec, start, where in _table(elf, "__mcount_loc", elf.arch.mcount_loc_entry):
        if sec.sh_type == SHT_NOBITS:
            raise elf.fail(f"site {sec.where(start)} is in {sec.name}, which has no file bytes (SHT_NOBITS), {where}")
        if start < 0 or start + 5 > sec.sh_size:
            raise elf.fail(
                f"site {sec.where(start)} of 5 bytes does not fit in {sec.name} ({sec.sh_size:#x} bytes), {where}"
            )
        listed.append((sec, start))
    return listed


def _table(elf: ElfFile, name: str, size: int) -> list[tuple[Section, int, str]]:
    """(section, offset, the entry for a message) of every place a table of addresses (__mcount_loc,
    __patchable_function_entries) lists through its relocations; `size`: the bytes of an entry, which hold a
    REL entry's addend."""
    # clang makes one __patchable_function_entries a function section, all of one name.
    listed = []
    for loc in (s for s in elf.sections if s.name == name):
        rels = [(s, loc) for s in elf.sections if s.sh_type in (SHT_REL, SHT_RELA) and s.sh_info == loc.shndx]
        if not rels:
            continue
        entries = _read(elf, rels)
        words_ = elf.section_data(loc)
        # An entry names a symbol of the site's section (usually the section symbol) and an offset from it.
        symbols = [elf.arch.r_sym(r_info) for r_info in entries.r_info]
        places = {symbol: elf.symbols.place(symbol) for symbol in set(symbols)}
        for i, symbol in enumerate(symbols):
            addend = entries.addend(i)
            if addend is None:
                r_offset = entries.r_offset[i]
                addend = int.from_bytes(words_[r_offset : r_offset + size], "little", signed=True)
            shndx, st_value = places[symbol]
            if not 0 < shndx < len(elf.sections):
                continue
            listed.append((elf.sections[shndx], st_value + addend, f"relocation {entries.name(i)}"))
    return listed


def _patchable(elf: ElfFile) -> tuple[list[tuple[Section, Place]], list[str]]:
    """The site of every entry of __patchable_function_entries: where its function is entered, each with its
    bytes there (patchable.place); and why a call cannot go where the others are entered (too few nop bytes). An entry outside
    code is refused as the kernel's ftrace_bug refuses a bad site: nothing is written."""
    places: list[tuple[Section, Place]] = []
    reasons: list[str] = []
    starts: dict[int, list[int]] = {}
    for sec, listed, where in _table(elf, SECTION, elf.arch.word):
        if not sec.is_exec or sec.sh_type == SHT_NOBITS or not 0 <= listed < sec.sh_size:
            raise VerifyError(
                "",
                f"an entry of {SECTION} points outside the object's executable code, at {sec.where(listed)} ({where})",
            )
        if sec.shndx not in starts:
            starts[sec.shndx] = sorted(set(elf.symbols.function_starts(sec.shndx)))
        found = place(listed, _reader(elf, sec), starts[sec.shndx], elf.arch, sec.where)
        if isinstance(found, str):
            reasons.append(found)
        else:
            places.append((sec, found))
    return places, reasons


def _reader(elf: ElfFile, sec: Section) -> Callable[[int, int], bytes]:
    """n bytes at an offset of `sec` (fewer at its end)."""
    first, last = sec.sh_offset, sec.sh_offset + sec.sh_size
    return lambda at, n: elf.data[first + at : min(first + at + n, last)]


def _patchable_group(sites: Sequence[tuple[Section, Place]]) -> SiteGroup:
    """The -fpatchable-function-entry sites no relocation makes calls: nops, or what verification refuses."""
    return SiteGroup(
        Form.PATCHABLE,
        None,
        tuple(sec for sec, _ in sites),
        tuple(p.site for _, p in sites),
        tuple(p.code for _, p in sites),
        (None,) * len(sites),
        entry=True,
    )


def _compiler_nops(
    elf: ElfFile,
    groups: Sequence[SiteGroup],
    places: Mapping[tuple[int, int], bytes],
    records: Mapping[tuple[int, int], bytes],
) -> list[SiteGroup]:
    """The groups, with the sites that fill a -fpatchable-function-entry site (`call --target` made them calls)
    split off, each knowing the compiler's nop that `nop` gives back: its record, next to its entry. A site runs
    on to the end of that nop where it is longer than a call: the record's, or where there is none (REL), the one
    still there (`places`: each site's bytes, as patchable.place read them)."""
    if not places:
        return list(groups)
    out = []
    for group in groups:
        kinds: list[tuple[bytes | None, int]] = []
        for sec, start in zip(group.sections, group.starts, strict=True):
            held = places.get((sec.shndx, start))
            value = None if held is None else records.get((sec.shndx, start + 1), b"")
            kinds.append((value, len(value or (held if held in LONG_PATCHABLE_NOPS else b""))))
        for kind in dict.fromkeys(kinds):
            part = group if len(set(kinds)) == 1 else group.subset([k == kind for k in kinds])
            value, length = kind
            if length > SITE_LENGTH[part.form]:
                part = _spanning(elf, part, length)
            out.append(part if value is None else replace(part, compiler_nop=value))
    return out


def _spanning(elf: ElfFile, group: SiteGroup, length: int) -> SiteGroup:
    """The sites of a group filling a compiler's nop of `length` bytes, longer than a call: each site's bytes run
    on to that nop's end, and its call is followed by the nop that fills the rest (x86.filled), so that a site
    is a call only when both are there, and `nop` writes the compiler's whole nop back over both."""
    codes = tuple(
        elf.data[sec.sh_offset + start : sec.sh_offset + min(start + length, sec.sh_size)]
        for sec, start in zip(group.sections, group.starts, strict=True)
    )
    calls = tuple(None if call is None else filled(call, length) for call in group.calls)
    return replace(group, codes=codes, calls=calls)


def _recorded(elf: ElfFile, listed: Sequence[tuple[Section, int]]) -> SiteGroup:
    """The sites gcc -mnop-mcount left as nops, known only from __mcount_loc's relocations."""
    codes = tuple(elf.data[sec.sh_offset + start : sec.sh_offset + start + 5] for sec, start in listed)
    return SiteGroup(
        Form.RECORDED,
        None,
        tuple(sec for sec, _ in listed),
        tuple(start for _, start in listed),
        codes,
        (None,) * len(codes),
    )


def _opcodes(form: Form) -> tuple[Form, ...]:
    """The forms a call relocation of `form` relocates: an `e8` one an `e9` tail jmp too (relocated.by_opcode)."""
    return (form, TAIL_OF[form]) if form in TAIL_OF else (form,)


class _Said(Mapping[int, str]):
    """The live calls found, each said only when asked: a plan of `call` asks only where they end, and saying
    each of a module's thousand calls cost a third of its run."""

    def __init__(self, found: dict[int, tuple[int, int, int, int]], say: Callable[..., str]) -> None:
        self._found, self._say = found, say

    def __getitem__(self, end: int) -> str:
        return self._say(*self._found[end])

    def __contains__(self, end: object) -> bool:
        return end in self._found

    def __iter__(self) -> Iterator[int]:
        return iter(self._found)

    def __len__(self) -> int:
        return len(self._found)


class ObjectChecks(Checks):
    """An object's checks: its function symbols, what `call` cannot restore, and its relocations read again."""

    def __init__(
        self,
        elf: ElfFile,
        symbols: Mapping[int, str],
        tables: Tables,
        groups: tuple[SiteGroup, ...],
        found_strays: Strays,
    ) -> None:
        self.elf = elf
        self.symbols = symbols  # symbol index -> name, of every target symbol
        self.tables = tables  # the relocation tables that apply to code
        self.groups = groups
        self.found_strays = found_strays  # what the scan itself met that `call` cannot restore

    def function_at(self, section: Section, offset: int) -> str | None:
        return self.elf.symbols.function_names(section.shndx, (offset,))[0]

    def functions_at(self, section: Section, offsets: Sequence[int]) -> list[str | None]:
        return self.elf.symbols.function_names(section.shndx, offsets)

    def readback(self, group: SiteGroup, new: bytes, positions: Sequence[int]) -> list[int]:
        recorded = bool(group.compiler_nop)  # a -fpatchable-function-entry site whose record says its call
        return [] if restorable(self.elf, self.symbols, group.target, new, recorded) else list(positions)

    def redirect(self, group: SiteGroup, name: str) -> Redirect:
        """Each site's relocation names `name`, with the type its form needs (a GOTPCRELX site keeps it, so
        that the link relaxes it to a direct call where `name` is local); its bytes are the form's call."""
        elf = self.elf
        arch = elf.arch
        if group.form is Form.PATCHABLE:
            raise elf.fail(
                f"{group.sections[0].where(group.starts[0])}: -fpatchable-function-entry left a nop here and no "
                f"relocation entry to make it a call to {name} with: `ftpatch call --target {name}` adds one"
            )
        if group.form is Form.RECORDED:
            raise elf.fail(
                f"{group.sections[0].where(group.starts[0])}: gcc -mnop-mcount left a nop here and no relocation "
                f"entry to make it a call to {name} with, rebuild without -mnop-mcount"
            )
        symbol = self.symbol(name)
        r_type = arch.r_type(int.from_bytes(group.call_entry[: arch.word], "little"))
        call = call_bytes(group.form, 0 if arch.rela else arch.call_addend(group.form))
        # A function's own site pointed at itself would recurse at its first call; only a function defined
        # here has sites here.
        function_at, defined = self.function_at, elf.symbols.place(symbol)[0] != SHN_UNDEF
        refused = (
            {
                i: RECURSIVE.format(name=name)
                for i, (section, start) in enumerate(zip(group.sections, group.starts, strict=True))
                if function_at(section, start) == name
            }
            if defined
            else {}
        )
        return Redirect((call,) * len(group), call_entry(elf, symbol, r_type), refused)

    def symbol(self, name: str) -> int:
        """The index of the one symbol named `name`, which must be a function or undefined."""
        elf = self.elf
        found = list(elf.symbols.named([name])) if elf.has_symtab else []
        if not found:
            raise elf.fail(f"{name}: no symbol of this name, to point the sites at")
        if len(found) > 1:
            raise elf.fail(f"{name}: {len(found)} symbols have this name (symbols {', '.join(map(str, found))})")
        symbol = elf.symbols[found[0]]
        if symbol.st_type not in (STT_NOTYPE, STT_FUNC, STT_GNU_IFUNC):
            raise elf.fail(
                f"{name}: symbol {found[0]} is not a function (st_type {symbol.st_type}), a call cannot go to it"
            )
        return found[0]

    def clash(self, group: SiteGroup) -> str:
        return record_clash(self.elf, self.symbols, group.target)

    def live_calls(self, data: bytes | bytearray) -> Mapping[int, str]:
        """Every relocation against a target, read again from `data`, that makes a call of its site's bytes:
        keyed by the file offset where the call ends, as the end of its displacement."""
        if not self.symbols:
            return {}
        elf = self.elf.reread(bytes(data))
        entries = elf.relocations(self.tables, len(self.elf.symbols))
        arch, found = elf.arch, dict[int, tuple[int, int, int, int]]()
        # Where each table's section lies in the file, None where it has no bytes: a retarget finds a live call at
        # each of a module's thousand sites, and a lookup of the section for each cost a third of the loop.
        bases = [None if sec is None or sec.sh_type == SHT_NOBITS else sec.sh_offset + 4 for _, sec in entries.tables]
        table, r_offset, read = entries.table, entries.r_offset, elf.data
        for r_info, positions in entries.against(self.symbols).items():
            symbol, r_type = arch.r_sym(r_info), arch.r_type(r_info)
            form = arch.call_forms.get(r_type)
            if form is None:
                continue
            # A form's call and its tail jmp are as long (e8 and e9, ff 15 and ff 25).
            calls = {call_bytes(f, 0 if arch.rela else arch.call_addend(f)) for f in _opcodes(form)}
            (length,) = {len(call) for call in calls}
            for i in positions:
                base = bases[table[i]]
                if base is not None and read[(at := base + r_offset[i]) - length : at] in calls:
                    found[at] = (r_type, symbol, i, length)
        return _Said(found, partial(self._said, entries))

    def _said(self, entries: Relocations, r_type: int, symbol: int, i: int, length: int) -> str:
        arch, end = self.elf.arch, entries.r_offset[i] + 4
        return (
            f"{arch.reloc_name(r_type)} against {self.symbols[symbol]} at {entries.section(i).where(end - length)}, "
            f"relocation {entries.name(i)}"
        )

    def strays(self) -> tuple[str, ...]:
        """What `call` cannot restore: what the scan met, and nops only ftpatch writes, or nops at a
        function's entry, where no relocation entry says a site is (`ld -r` by gold drops NONE entries)."""
        elf = self.elf
        sites = {(s.shndx, start) for g in self.groups for s, start in zip(g.sections, g.starts, strict=True)}
        found = list(self.found_strays.values())
        said = self.found_strays.keys()  # a zeroed entry said so already: its nop is said once
        # The code is searched for any nop of ftpatch's once; only where one is are its marked nops, and its
        # functions' entries, looked at: a retarget's objects, fresh from the compiler, hold none.
        holding = [
            sec
            for sec in elf.sections
            if sec.is_exec
            and sec.sh_type != SHT_NOBITS
            and find_nops(elf.data, ftpatch_nops(elf.arch), sec.sh_offset, sec.sh_offset + sec.sh_size)
        ]
        for sec in holding:
            code = elf.section_data(sec)
            loose = {
                at: nop
                for at, nop in find_marked_nops(code, elf.arch).items()
                if (sec.shndx, at) not in sites and (sec.shndx, at + len(nop)) not in said
            }
            found += [
                f"{sec.where(at)}: holds {loose[at].hex(':')}, a nop ftpatch writes, with no relocation entry to "
                f"restore{_LOST}"
                for at in sorted(self._on_instructions(sec, loose))
            ]
        # clang's -fpatchable-function-entry writes ftpatch's entry nop too, and lists where. (Decoding a kernel
        # module's symbols costs more than the rest of `call`: only where a section holds one of ftpatch's nops.)
        if holding and elf.has_symtab and elf.section_named("__patchable_function_entries") is None:
            functions = elf.symbols.functions
            for shndx, value in zip(functions.st_shndx, functions.st_value, strict=True):
                if not 0 < shndx < len(elf.sections) or (sec := elf.sections[shndx]).sh_type == SHT_NOBITS:
                    continue
                # The file's bytes, not a view of the section: one slice a function, for thousands of functions.
                first, last = sec.sh_offset + value, sec.sh_offset + sec.sh_size
                at = value + 4 if elf.data[first : min(first + 4, last)] in ENDBR else value
                entry = elf.data[sec.sh_offset + at : min(sec.sh_offset + at + 6, last)]
                nop = next((c for c in (entry, entry[:5]) if written_by_ftpatch(c, elf.arch)), None)
                if nop is not None and (sec.shndx, at) not in sites and (sec.shndx, at + len(nop)) not in said:
                    found.append(
                        f"{sec.where(at)}: holds {nop.hex(':')} at a function's entry, a nop ftpatch writes, with no "
                        f"relocation entry to restore{_LOST}"
                    )
        return tuple(dict.fromkeys(found))

    def _on_instructions(self, sec: Section, offsets: Collection[int]) -> set[int]:
        """The offsets in `sec` that begin an instruction, decoded from the start of the function holding
        each (or of the section, in an object without symbols)."""
        if not offsets:  # the usual case: no nop of ftpatch's lies outside a site
            return set()
        starts = {0}
        if self.elf.has_symtab:
            starts |= set(self.elf.symbols.function_starts(sec.shndx))
        ordered = sorted(starts)
        by_start: dict[int, set[int]] = {}
        for at in offsets:
            by_start.setdefault(ordered[bisect_right(ordered, at) - 1], set()).add(at)
        code = self.elf.section_data(sec) if by_start else b""
        found: set[int] = set()
        for start, wanted in by_start.items():
            found |= instruction_starts(code[start:], self.elf.arch, start, wanted)
        return found
