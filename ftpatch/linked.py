"""Linked files: find the profiling call sites of an executable or a shared object.

A linked file has no relocation at its sites (unless it was linked with
--emit-relocs), so a site is recognised by what it calls. First the target is
resolved from the dynamic relocations and symbols, which ftpatch never
changes (FACTS.md):

- a GOT slot that R_*_GLOB_DAT fills with mcount: `ff 15 disp32` (x86-64 PIE
  and the Debian default) or `ff 93 disp32` relative to the GOT base (i386);
- the PLT entry (.plt, .plt.sec with IBT, .plt.got) whose indirect jmp goes
  through a JUMP_SLOT or GLOB_DAT slot for mcount: `e8 rel32` (-fno-pie);
- mcount itself, defined in the file (-static): `e8 rel32`, or `67 e8 rel32`
  where ld relaxed a GOTPCRELX call.

Then the sites are located by the first of these the file has:

1. `__mcount_loc` (gcc -mrecord-mcount), with R_*_RELATIVE addends in a PIE;
2. relocations against a target kept by `ld --emit-relocs`;
3. function symbols (.symtab, else .dynsym): capstone decodes each prologue.
   With __fentry__ the site is the first instruction, or follows endbr. With
   mcount it follows the frame setup (endbr, push, mov %rsp,%rbp, sub/and on
   the stack pointer, the i386 GOT pointer setup); the first instruction that
   is not part of it must be the call, or a known nop where the call would sit;
4. none of these (a stripped program): a linear sweep of the executable
   sections for calls to the target. Nop'd sites cannot be found that way, so
   `call` refuses such a file (ScanResult.blind says why).

Every site's `call` is the exact instruction recomputed from the resolved
target, so verification checks the opcode and the target.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from .elf import ET_DYN, SHF_EXECINSTR, SHT_NOBITS, ElfFile, Section
from .errors import InputError, VerifyError
from .x86 import OPCODES, SITE_LENGTH, Form, call_bytes, known_nop

if TYPE_CHECKING:
    from .scan import Site, SiteGroup

SHF_ALLOC = 0x2
# Dynamic relocation types, the same numbers on x86-64 and i386.
R_GLOB_DAT, R_JUMP_SLOT, R_RELATIVE = 6, 7, 8
# Call relocation types ld --emit-relocs keeps (it may retype a relaxed GOTPCRELX as PC32).
_CALL_TYPES = {True: {2, 4, 9, 41, 42}, False: {2, 3, 4, 43}}
_WINDOW = 16  # instructions decoded from a function's entry
_PROLOGUE_BYTES = 96
_ENDBR = (bytes.fromhex("f30f1efa"), bytes.fromhex("f30f1efb"))
_MCOUNT_TARGETS = ("mcount", "_mcount")
STRIPPED = (
    "has no __mcount_loc, no relocations and no function symbols, so only live calls can be found and "
    "nop'd sites cannot; `call` needs the unstripped file (or one built with -mrecord-mcount)"
)


@dataclass(frozen=True)
class Target:
    """Where calls to one target symbol go in this file."""

    name: str
    got_slots: frozenset[int]  # GOT slots a GLOB_DAT fills with the target: ff 15 / ff 93
    plt: frozenset[int]  # PLT entries that jump through a slot of the target: e8
    address: int | None  # the target itself, defined here (-static): e8 / 67 e8
    entry: bool  # called as the function's first instruction (-mfentry), not after the prologue


class _Linked:
    def __init__(self, elf: ElfFile, names: Iterable[str]) -> None:
        from elftools.elf.elffile import ELFFile

        self.elf = elf
        self.path = elf.path
        self.x86_64 = elf.x86_64
        self.names = frozenset(names)
        self.ef = ELFFile(io.BytesIO(elf.data))
        self.exec_sections = [
            s for s in elf.sections if s.sh_flags & SHF_EXECINSTR and s.sh_flags & SHF_ALLOC and s.sh_type != SHT_NOBITS
        ]
        self.blind = ""
        self._got_base: int | None = None
        self.entry_of: Callable[[int], bool | None] | None = None

    # -- addresses ---------------------------------------------------------------------

    def section_at(self, va: int) -> Section | None:
        for s in self.exec_sections:
            if s.sh_addr <= va < s.sh_addr + s.sh_size:
                return s
        return None

    def read(self, va: int, length: int) -> bytes:
        sec = self.section_at(va)
        if sec is None:
            return b""
        off = va - sec.sh_addr
        return bytes(self.elf.data[sec.sh_offset + off : sec.sh_offset + min(off + length, sec.sh_size)])

    # -- targets -----------------------------------------------------------------------

    def _symbol_tables(self) -> list[Any]:
        from elftools.elf.sections import SymbolTableSection

        tables = [s for s in self.ef.iter_sections() if isinstance(s, SymbolTableSection)]
        return sorted(tables, key=lambda t: t.name != ".symtab")

    def _dynamic_slots(self) -> dict[str, dict[int, set[int]]]:
        """name -> relocation type (GLOB_DAT, JUMP_SLOT) -> GOT slot addresses."""
        from elftools.elf.relocation import RelocationSection

        slots: dict[str, dict[int, set[int]]] = {}
        for rel in self.ef.iter_sections():
            if not isinstance(rel, RelocationSection) or not rel["sh_flags"] & SHF_ALLOC:
                continue
            if not 0 < rel["sh_link"] < self.ef.num_sections():
                continue
            symtab = self.ef.get_section(rel["sh_link"])
            if symtab["sh_type"] != "SHT_DYNSYM":
                continue
            for r in rel.iter_relocations():
                if r["r_info_type"] in (R_GLOB_DAT, R_JUMP_SLOT) and r["r_info_sym"]:
                    name = symtab.get_symbol(r["r_info_sym"]).name.split("@")[0]
                    if name in self.names:
                        slots.setdefault(name, {}).setdefault(r["r_info_type"], set()).add(r["r_offset"])
        return slots

    def got_base(self) -> int | None:
        for table in self._symbol_tables():
            for sym in table.get_symbol_by_name("_GLOBAL_OFFSET_TABLE_") or ():
                return int(sym["st_value"])
        for name in (".got.plt", ".got"):
            sec = self.ef.get_section_by_name(name)
            if sec is not None:
                return int(sec["sh_addr"])
        return None

    def _plt_entries(self, slots: set[int], got_base: int | None) -> set[int]:
        """Entries of .plt, .plt.sec and .plt.got whose indirect jmp goes through one of `slots`."""
        import capstone
        from capstone import x86 as cx

        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if self.x86_64 else capstone.CS_MODE_32)
        md.detail = True
        md.skipdata = True
        entries = set()
        for sec in self.exec_sections:
            if not sec.name.startswith(".plt"):
                continue
            code = self.elf.data[sec.sh_offset : sec.sh_offset + sec.sh_size]
            previous = None
            for ins in md.disasm(code, sec.sh_addr):
                if ins.id == cx.X86_INS_JMP and len(ins.operands) == 1 and ins.operands[0].type == cx.X86_OP_MEM:
                    mem = ins.operands[0].mem
                    if mem.base == cx.X86_REG_RIP:
                        slot = ins.address + ins.size + mem.disp
                    elif mem.base == cx.X86_REG_EBX and got_base is not None:
                        slot = got_base + mem.disp
                    elif mem.base == 0 and mem.index == 0:
                        slot = mem.disp & 0xFFFFFFFF
                    else:
                        slot = None
                    if slot in slots:
                        endbr = previous is not None and previous.id in (cx.X86_INS_ENDBR64, cx.X86_INS_ENDBR32)
                        entries.add(previous.address if endbr and previous else ins.address)
                previous = ins
        return entries

    def targets(self) -> list[Target]:
        slots = self._dynamic_slots()
        defined: dict[str, int] = {}
        for table in self._symbol_tables():
            for name in self.names:
                for sym in table.get_symbol_by_name(name) or ():
                    if sym["st_shndx"] != "SHN_UNDEF" and sym["st_value"]:
                        defined.setdefault(name, int(sym["st_value"]))
        got_base = self.got_base() if not self.x86_64 else None
        out = []
        for name in sorted(self.names):
            by_type = slots.get(name, {})
            glob_dat = by_type.get(R_GLOB_DAT, set())
            all_slots = glob_dat | by_type.get(R_JUMP_SLOT, set())
            plt = self._plt_entries(all_slots, got_base) if all_slots else set()
            if glob_dat and not self.x86_64 and got_base is None:
                raise InputError(self.path, f"{name} has a GOT slot but the file has no GOT base, .got.plt")
            if glob_dat or plt or name in defined:
                entry = name not in _MCOUNT_TARGETS
                out.append(Target(name, frozenset(glob_dat), frozenset(plt), defined.get(name), entry))
        self._got_base = got_base
        return out

    def calls(self, target: Target, va: int) -> list[tuple[Form, bytes]]:
        """Every call to `target` a site at `va` could hold: its form and exact bytes."""
        wanted: list[tuple[Form, int]] = [(Form.REL32, plt - (va + 5)) for plt in sorted(target.plt)]
        if target.address is not None:
            wanted.append((Form.REL32, target.address - (va + 5)))
            wanted.append((Form.ADDR32_REL32, target.address - (va + 6)))
        for slot in sorted(target.got_slots):
            if self.x86_64:
                wanted.append((Form.GOTPCREL, slot - (va + 6)))
            elif self._got_base is not None:
                wanted.append((Form.GOT_EBX, slot - self._got_base))
        return [(form, call_bytes(form, disp)) for form, disp in wanted if -(2**31) <= disp < 2**31]

    # -- one site ----------------------------------------------------------------------

    def site_at(
        self, va: int, targets: list[Target], function: str | None, strict: bool, lengths: tuple[int, ...] = (5, 6)
    ) -> Site | None:
        """The site at `va`: a call to a target, or a known nop of a call's length.

        With `strict` (the address came from __mcount_loc or a relocation) a
        site that holds neither is reported as State.OTHER; otherwise it is no site.
        """
        from .scan import Site, State

        sec = self.section_at(va)
        if sec is None:
            if strict:
                raise VerifyError(self.path, f"site {va:#x} is not in an executable section")
            return None
        code6 = self.read(va, 6)
        options = [(t, f, c) for t in targets for f, c in self.calls(t, va) if SITE_LENGTH[f] in lengths]
        state, chosen = State.OTHER, None
        for t, f, c in options:
            if code6.startswith(c):
                state, chosen = State.CALL, (t, f, c)
                break
        else:
            for length in (5, 6):
                if known_nop(code6[:length], self.x86_64):
                    fits = [o for o in options if SITE_LENGTH[o[1]] == length]
                    if len({o[2] for o in fits}) > 1 and self.entry_of is not None:
                        # -static defines both mcount and __fentry__: the position tells them apart.
                        entry = self.entry_of(va)
                        fits = [o for o in fits if entry is None or o[0].entry == entry]
                    if len({o[2] for o in fits}) > 1:
                        calls = ", ".join(sorted(f"{o[1].value} to {o[0].name}" for o in fits))
                        raise VerifyError(
                            self.path, f"the nop at {sec.where(va - sec.sh_addr)} could have been any of: {calls}"
                        )
                    if fits:
                        state, chosen = State.NOP, fits[0]
                        break
        if chosen is None:
            if not strict or not options:
                return None
            chosen = next((o for o in options if code6.startswith(o[2][:-4])), options[0])
        t, form, call = chosen
        offset = va - sec.sh_addr
        code = code6[: SITE_LENGTH[form]]
        if state is State.OTHER and known_nop(code, self.x86_64):
            # A nop where a site must be, whose call no target's position allows: a site's
            # state is what its bytes are (scan.site_state), so this cannot pass as OTHER.
            raise VerifyError(
                self.path, f"the nop at {sec.where(offset)} is where no call of a target can be, by its position"
            )
        return Site(function, sec.name, offset, sec.sh_offset + offset, form, t.name, state, code, call, None)

    # -- locating ----------------------------------------------------------------------

    def _mcount_loc(self) -> list[int] | None:
        sec = self.ef.get_section_by_name("__mcount_loc")
        if sec is None or sec["sh_type"] == "SHT_NOBITS":
            return None
        size = 8 if self.x86_64 else 4
        fmt = "<Q" if self.x86_64 else "<I"
        data = sec.data()
        if len(data) % size:
            raise InputError(self.path, f"__mcount_loc is {len(data):#x} bytes, not a multiple of {size}")
        words = {sec["sh_addr"] + i * size: v for i, (v,) in enumerate(struct.iter_unpack(fmt, data))}
        if self.elf.e_type == ET_DYN:
            from elftools.elf.relocation import RelocationSection

            for rel in self.ef.iter_sections():
                if isinstance(rel, RelocationSection) and rel["sh_flags"] & SHF_ALLOC and rel.is_RELA():
                    for r in rel.iter_relocations():
                        if r["r_info_type"] == R_RELATIVE and r["r_offset"] in words:
                            words[r["r_offset"]] = r["r_addend"]
        return sorted(v for v in words.values() if v)

    def _emitted_relocs(self) -> list[tuple[int, str]] | None:
        """(address of the displacement, symbol) of every call relocation against a target."""
        from elftools.elf.relocation import RelocationSection

        found = None
        for rel in self.ef.iter_sections():
            if not isinstance(rel, RelocationSection) or rel["sh_flags"] & SHF_ALLOC:
                continue
            if not 0 < rel["sh_info"] < len(self.elf.sections) or not self.elf.sections[rel["sh_info"]].is_exec:
                continue
            symtab = self.ef.get_section(rel["sh_link"])
            found = found if found is not None else []
            for r in rel.iter_relocations():
                if r["r_info_type"] in _CALL_TYPES[self.x86_64] and r["r_info_sym"]:
                    name = symtab.get_symbol(r["r_info_sym"]).name.split("@")[0]
                    if name in self.names:
                        found.append((r["r_offset"], name))
        return found

    def functions(self) -> dict[int, tuple[str, int]]:
        """Function start -> (name, size), from .symtab, else .dynsym."""
        for table in self._symbol_tables():
            funcs: dict[int, tuple[str, int]] = {}
            ranks: dict[int, bool] = {}
            for sym in table.iter_symbols():
                if sym["st_info"]["type"] == "STT_FUNC" and sym["st_shndx"] != "SHN_UNDEF" and sym["st_value"]:
                    start = int(sym["st_value"])
                    if self.section_at(start) is not None:
                        # Aliases share an address: keep a global name over a local one (lib_fib.localalias).
                        rank = sym["st_info"]["bind"] == "STB_LOCAL"
                        if start not in funcs or rank < ranks[start]:
                            funcs[start] = (sym.name, int(sym["st_size"]))
                            ranks[start] = rank
            if funcs:
                return funcs
        return {}

    def _function_site(
        self, start: int, name: str, targets: list[Target], suspect: frozenset[Form] = frozenset()
    ) -> Site | None:
        """The site in the prologue of the function at `start`, if it has one.

        Calls and nops are accepted at the same places, so that a site `nop`
        changes is found again by `call`: a __fentry__ site only while nothing
        but endbr came before it, an mcount site only after the frame setup
        and while nothing but prologue instructions came before it.
        """
        from .scan import State
        from .x86 import decode

        code = self.read(start, _PROLOGUE_BYTES)
        at_entry, framed = True, False
        for count, ins in enumerate(decode(code, self.x86_64, start)):
            if count == _WINDOW:
                break
            allowed = [t for t in targets if (t.entry and at_entry) or (not t.entry and framed)]
            if allowed:
                site = self.site_at(ins.offset, allowed, name, strict=False)
                if site is not None and site.state is not State.OTHER:
                    return site
                raw = code[ins.offset - start : ins.offset - start + ins.size]
                if any(ins.size == SITE_LENGTH[f] and raw.startswith(OPCODES[f]) for f in suspect):
                    return self.site_at(ins.offset, allowed, name, strict=True)
            kind = _prologue_kind(ins.text, self.x86_64)
            if kind == "endbr":
                continue
            at_entry = False
            if kind == "frame":
                framed = True
            elif kind == "call":
                rel = code[ins.offset - start + 1 : ins.offset - start + 5]
                if ins.size != 5 or code[ins.offset - start] != 0xE8 or len(rel) != 4:
                    return None
                if not self._is_pc_thunk(ins.offset + 5 + int.from_bytes(rel, "little", signed=True)):
                    return None
            elif kind is None:
                return None
        return None

    def _is_pc_thunk(self, va: int) -> bool:
        """i386 __x86.get_pc_thunk.*: mov (%esp),%reg; ret."""
        code = self.read(va, 4)
        return len(code) == 4 and code[0] == 0x8B and code[2] == 0x24 and code[3] == 0xC3

    def _sweep(self) -> Iterator[int]:
        """Every call instruction a linear decode of the executable sections meets."""
        from .x86 import decode

        for sec in self.exec_sections:
            code = bytes(self.elf.data[sec.sh_offset : sec.sh_offset + sec.sh_size])
            pos = 0
            while pos < len(code):
                end = pos
                for ins in decode(code[pos:], self.x86_64, sec.sh_addr + pos):
                    if "call" in ins.text:
                        yield ins.offset
                    end = ins.offset - sec.sh_addr + ins.size
                pos = end + 1  # past the byte capstone could not decode

    def run(self) -> tuple[Site, ...]:
        import bisect

        from .scan import State

        targets = self.targets()
        if not targets:
            return ()
        funcs = self.functions()
        names = sorted(funcs)

        def function_of(va: int) -> str | None:
            i = bisect.bisect_right(names, va) - 1
            if i >= 0:
                name, size = funcs[names[i]]
                if va < names[i] + max(size, 1):
                    return name
            return None

        def entry_of(va: int) -> bool | None:
            """Whether `va` is where a __fentry__ call sits: a function's first instruction, or after endbr."""
            name = function_of(va)
            if name is None:
                return None
            i = bisect.bisect_right(names, va) - 1
            return va == names[i] or (va == names[i] + 4 and self.read(names[i], 4) in _ENDBR)

        self.entry_of = entry_of
        sites: list[Site] = []
        recorded = self._mcount_loc()
        emitted = self._emitted_relocs() if recorded is None else None
        if recorded is not None:
            for va in recorded:
                site = self.site_at(va, targets, function_of(va), strict=True)
                if site is not None:
                    sites.append(site)
        elif emitted is not None:
            by_name = {t.name: t for t in targets}
            for disp, name in emitted:
                # ld may relax a GOTPCRELX call to 67 e8 and retype the relocation, so the
                # opcode is 2 bytes before the displacement, or 1 byte for a plain e8.
                named = by_name.get(name)
                if named is None:
                    continue
                same = [t for t in targets if t is named or (t.address is not None and t.address == named.address)]
                site = self.site_at(disp - 2, same, function_of(disp - 2), strict=False, lengths=(6,))
                if site is None or site.state is State.OTHER:
                    site = self.site_at(disp - 1, same, function_of(disp - 1), strict=True, lengths=(5,))
                if site is not None:
                    sites.append(site)
        elif funcs:
            found = {start: self._function_site(start, funcs[start][0], targets) for start in names}
            sites = [site for site in found.values() if site is not None]
            # A call of the sites' own form to somewhere else, where a site sits in a function
            # that has none, is a site something overwrote: report it, so verification fails.
            suspect = frozenset(s.form for s in sites)
            live = [t for t in targets if t.name in {s.target for s in sites}]
            for start, site in found.items():
                if site is None and suspect:
                    other = self._function_site(start, funcs[start][0], live, suspect)
                    if other is not None:
                        sites.append(other)
        else:
            self.blind = STRIPPED
            for va in self._sweep():
                site = self.site_at(va, targets, None, strict=False)
                if site is not None and site.state is State.CALL:
                    sites.append(site)
        unique = {s.file_offset: s for s in sites}
        return tuple(sorted(unique.values(), key=lambda s: s.file_offset))


def _prologue_kind(text: str, x86_64: bool) -> str | None:
    """What an instruction (capstone's Intel text) is in a -pg prologue, or None if it ends one."""
    mnemonic, _, ops = text.partition(" ")
    sp, bp = ("rsp", "rbp") if x86_64 else ("esp", "ebp")
    if mnemonic in ("endbr64", "endbr32"):
        return "endbr"
    if mnemonic == "mov" and ops == f"{bp}, {sp}":
        return "frame"
    if mnemonic == "push":
        return "push"
    if mnemonic in ("sub", "and") and ops.startswith(f"{sp}, "):
        return "stack"
    if mnemonic == "lea" and f"[{sp} + " in ops:  # stack realignment in main: lea ecx, [esp + 4]
        return "stack"
    if mnemonic == "or" and ops.startswith(f"qword ptr [{sp}]" if x86_64 else f"dword ptr [{sp}]"):
        return "stack"  # -fstack-clash-protection probe
    if not x86_64 and mnemonic == "add" and ops.startswith("ebx, "):
        return "got"  # i386 PIC: add $_GLOBAL_OFFSET_TABLE_, %ebx
    if mnemonic == "call":
        return "call"
    return None


def scan_linked(
    elf: ElfFile, names: Iterable[str]
) -> tuple[tuple[SiteGroup, ...], Callable[[Section, int], str | None], str]:
    """The sites of a linked file as groups, the name of the function at a place, and why
    nop'd sites cannot be found ("" when they can)."""
    from elftools.common.exceptions import ELFError
    from elftools.construct import ConstructError

    try:
        linked = _Linked(elf, names)
        sites = linked.run()
    except (ELFError, ConstructError, struct.error, ValueError, KeyError, IndexError) as e:
        raise InputError(
            elf.path, f"malformed linked file ({type(e).__name__}: {e}), reading it with pyelftools"
        ) from None
    functions = {site.file_offset: site.function for site in sites}
    return _groups(elf, sites), partial(_function_at, functions), linked.blind


def _groups(elf: ElfFile, sites: Iterable[Site]) -> tuple[SiteGroup, ...]:
    """Sites as groups, one per form and target; each site keeps its section and its own call."""
    from .scan import SiteGroup

    # A site names its section by name; with its file offset that names one section.
    sections = {(s.name, s.sh_offset): s for s in elf.sections}
    grouped: dict[tuple[Form, str | None], list[Site]] = {}
    for site in sites:
        grouped.setdefault((site.form, site.target), []).append(site)
    return tuple(
        SiteGroup(
            form,
            target,
            tuple(sections[s.section, s.file_offset - s.offset] for s in group),
            tuple(s.offset for s in group),
            tuple(s.code for s in group),
            tuple(s.call for s in group),
        )
        for (form, target), group in grouped.items()
    )


def _function_at(functions: dict[int, str | None], section: Section, offset: int) -> str | None:
    return functions.get(section.sh_offset + offset)


__all__ = ["Target", "scan_linked"]
