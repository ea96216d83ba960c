"""Call targets in a linked file: every way its code can reach mcount, _mcount, __fentry__ or the
-finstrument-functions hooks __cyg_profile_func_enter and __cyg_profile_func_exit.

A linked file has no relocation at its sites, so a site is recognised by
where it calls. That is resolved here, once per file and before any site is
looked for, from what ftpatch never changes (docs/facts.md):

- a GOT slot that the dynamic linker fills with the target (R_*_GLOB_DAT,
  R_*_JUMP_SLOT), or that the static linker filled with its address (a
  -static program linked by gold or lld keeps i386 `ff 93` calls through one);
  x86-64 code calls through it with `ff 15 disp32`, i386 with `ff 93 disp32`
  relative to the GOT base;
- a PLT entry (.plt, .plt.sec with IBT, .plt.got) whose jmp goes through such a
  slot: `e8 rel32` calls it;
- the target itself, defined in the file (-static): `e8 rel32`, or `67 e8 rel32`
  where the linker relaxed a GOT call.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property, partial

from . import sites
from .elf import (
    DT_PLTGOT,
    ET_EXEC,
    SHF_ALLOC,
    SHF_WRITE,
    SHN_UNDEF,
    SHT_DYNSYM,
    SHT_NOBITS,
    SHT_PROGBITS,
    SHT_REL,
    SHT_RELA,
    ElfFile,
    Relocations,
    Section,
    SymbolTable,
)
from .sites import DEFAULT_TARGETS, at_entry
from .x86 import ENDBR, SITE_LENGTH, TAILS, Arch, Form, branch_destination, call_bytes, decode_lite

# Dynamic relocation types, the same numbers on x86-64, x32 and i386 (R_*_RELATIVE: Arch.relative_types).
R_GLOB_DAT, R_JUMP_SLOT = 6, 7
# glibc's profiling runtime, gmon.o: __monstartup and _mcleanup, which every -pg link calls (gcrt1.o) and which
# glibc's mcount, _mcount and __fentry__ bring in wherever they are linked (mcount.o needs gmon.o's _gmonparam).
# In a stripped file their messages are what is left of them; a program built without -pg has neither
# (glibc's tunables name "gmon" in every static program, so the word alone says nothing).
_GMON_FUNCTIONS = ("__monstartup", "_mcleanup")
_GMON_MESSAGES = (b"monstartup: out of memory", b"_mcleanup: gmon.out")


@dataclass(frozen=True)
class Target:
    """Where calls to one target symbol go in this file."""

    name: str
    address: int | None  # the target itself, defined here (-static)
    slots: frozenset[int]  # GOT slots holding it: ff 15 / ff 93
    plt: frozenset[int]  # PLT entries that jump through one of its slots: e8

    @property
    def entry(self) -> bool | None:
        """Called as a function's first instruction (__fentry__: True), after its prologue (mcount: False),
        or either (None: a --symbol or --target, whose sites are where the compiler's were)."""
        return at_entry(self.name)

    @property
    def rel32_destinations(self) -> tuple[int, ...]:
        """Where a 5-byte call to it can land: its PLT entries, then itself where it is defined here."""
        return (*sorted(self.plt), *([self.address] if self.address is not None else []))

    @property
    def slot(self) -> int:
        """What a nop that replaced a call to it says (sites.slot)."""
        return sites.slot(self.name)


@dataclass(frozen=True)
class Call:
    """A call instruction to a target: what its bytes are and where they send it."""

    form: Form
    target: Target
    code: bytes


@dataclass(frozen=True)
class Targets:
    """Every target of a linked file, and each way a call to one is encoded, by what the encoding holds."""

    arch: Arch
    targets: tuple[Target, ...]
    got_base: int | None  # i386: what %ebx holds in PIC code, the base of ff 93's displacement
    # No symbol names a target: where they are was read from the live calls at the sites __mcount_loc
    # lists, and a nop'd site says nothing of it (a stripped static program).
    from_calls: bool = False

    def __bool__(self) -> bool:
        return bool(self.targets)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.targets]

    def named(self, name: str) -> Target | None:
        return next((t for t in self.targets if t.name == name), None)

    def _index(self, pairs: Iterable[tuple[int, Target]]) -> dict[int, Target]:
        # Aliases (mcount and _mcount in static glibc) share an address: the first name, in
        # DEFAULT_TARGETS order, names the calls to it. The bytes are the same either way.
        index: dict[int, Target] = {}
        for key, target in pairs:
            index.setdefault(key, target)
        return index

    @cached_property
    def rel32(self) -> dict[int, Target]:
        """Where an `e8` call lands -> its target."""
        return self._index((va, t) for t in self.targets for va in t.rel32_destinations)

    @cached_property
    def addr32(self) -> dict[int, Target]:
        """Where a `67 e8` call lands -> its target."""
        return self._index((t.address, t) for t in self.targets if t.address is not None)

    @cached_property
    def slot(self) -> dict[int, Target]:
        """A GOT slot's address -> the target it holds."""
        return self._index((slot, t) for t in self.targets for slot in sorted(t.slots))

    def call_at(self, code: bytes, va: int) -> Call | None:
        """The call to a target that `code`, the bytes at `va`, begins with, if any."""
        op = code[:1]
        if op in (b"\xe8", b"\xe9") and len(code) >= 5:
            target = self.rel32.get(branch_destination(code, va, 5))
            return Call(Form.REL32 if op == b"\xe8" else Form.TAIL, target, code[:5]) if target else None
        if len(code) < 6:
            return None
        op = code[:2]
        if op == b"\x67\xe8":
            target = self.addr32.get(branch_destination(code, va, 6))
            return Call(Form.ADDR32_REL32, target, code[:6]) if target else None
        disp = int.from_bytes(code[2:6], "little", signed=True)
        if op in (b"\xff\x15", b"\xff\x25") and self.arch.x86_64:
            target = self.slot.get(va + 6 + disp)
            form = Form.GOTPCREL if op == b"\xff\x15" else Form.TAIL_GOTPCREL
            return Call(form, target, code[:6]) if target else None
        if op == b"\xff\x93" and not self.arch.x86_64 and self.got_base is not None:
            target = self.slot.get((self.got_base + disp) & 0xFFFFFFFF)
            return Call(Form.GOT_EBX, target, code[:6]) if target else None
        return None

    def calls(
        self, va: int, length: int, entry: bool | None, form: Form | None = None, slot: int | None = None
    ) -> dict[bytes, Call]:
        """Every call to a target that a site of `length` bytes at `va` could hold, by its bytes.

        `entry` says whether the site is at a function's entry (True), inside one
        (False) or unknown (None); `form`, the form the site's nop says it replaced,
        and `slot`, which target it says (None: any). A tail jmp is only what a nop
        that says so replaced: its nop is a ret, not a nop.
        """
        found: dict[bytes, Call] = {}
        for t in self.targets:
            # A target whose name says no place (a --symbol, a --target) may be any nop's.
            if t.entry is not None and (
                (entry is not None and t.entry != entry) or (slot is not None and t.slot != slot)
            ):
                continue
            for call in self._encodings(t, va, length):
                if call.form is form or (form is None and call.form not in TAILS):
                    found.setdefault(call.code, call)
        return found

    def call_to(self, t: Target, form: Form, va: int) -> bytes | None:
        """The call to `t` that a site of `form` at `va` becomes (`call --target`), None if none fits:
        5 bytes call its PLT entry, else its definition (`e9`, a tail jmp, stays a jmp; gcc -mnop-mcount's nop
        becomes an `e8`); 6 bytes call through its GOT slot in the form of this machine's PIC code, else `67
        e8` its definition."""
        if SITE_LENGTH[form] == 5:
            five = Form.TAIL if form is Form.TAIL else Form.REL32
            return next((c.code for dest in t.rel32_destinations for c in self._near(t, five, dest - (va + 5))), None)
        # A 6-byte i386 site is gcc's `call *mcount@GOT(%ebx)`, or that call relaxed by the linker to `67 e8`
        # with the set-up of %ebx kept (clang calls mcount@PLT, 5 bytes): %ebx holds the GOT base there.
        if t.slots and (self.arch.x86_64 or self.got_base is not None):
            slot = min(t.slots)
            if self.arch.x86_64:
                disp = slot - (va + 6)
            else:
                assert self.got_base is not None
                disp = ((slot - self.got_base + 2**31) % 2**32) - 2**31
            found = next(self._near(t, Form.GOTPCREL if self.arch.x86_64 else Form.GOT_EBX, disp), None)
            if found is not None:
                return found.code
        if t.address is not None:
            return next((c.code for c in self._near(t, Form.ADDR32_REL32, t.address - (va + 6))), None)
        return None

    @staticmethod
    def _near(t: Target, form: Form, disp: int) -> Iterator[Call]:
        if -(2**31) <= disp < 2**31:
            yield Call(form, t, call_bytes(form, disp))

    def _encodings(self, t: Target, va: int, length: int) -> Iterator[Call]:
        near = partial(self._near, t)
        if length == 5:
            for dest in t.rel32_destinations:
                yield from near(Form.REL32, dest - (va + 5))
                yield from near(Form.TAIL, dest - (va + 5))
            return
        if t.address is not None:
            yield from near(Form.ADDR32_REL32, t.address - (va + 6))
        for slot in sorted(t.slots):
            if self.arch.x86_64:
                yield from near(Form.GOTPCREL, slot - (va + 6))
                yield from near(Form.TAIL_GOTPCREL, slot - (va + 6))
            elif self.got_base is not None:
                yield from near(Form.GOT_EBX, ((slot - self.got_base + 2**31) % 2**32) - 2**31)


def resolve(elf: ElfFile, names: Iterable[str], recorded: Mapping[int, bool | None] | None = None) -> Targets:
    """Every target among `names` that this linked file can call, and how.

    `recorded`: the sites __mcount_loc lists, each at a function's entry or not. A stripped
    static program names no target, and there the calls at those sites say where the targets are.
    """
    ordered = sorted(
        set(names), key=lambda n: (DEFAULT_TARGETS.index(n) if n in DEFAULT_TARGETS else len(DEFAULT_TARGETS), n)
    )
    tables = [t for t in (elf.symbols if elf.has_symtab else None, elf.dynamic_symbols) if t is not None]
    addresses = _defined(elf, tables, ordered)
    got_base = _got_base(elf, tables) if not elf.arch.x86_64 else None
    # Stripped, with glibc's profiling runtime linked in: a target is defined here and nothing names it.
    from_calls = bool(
        recorded
        and not addresses
        and not elf.has_symtab
        and not (elf.dynamic_symbols and elf.dynamic_symbols.named(ordered))
        and profiling_runtime(elf)
    )
    if from_calls:
        addresses = _recorded_targets(elf, recorded or {}, got_base)
        ordered = [name for name in DEFAULT_TARGETS if name in addresses]
    relocations = dynamic_relocations(elf)
    slots = _dynamic_slots(elf, relocations, ordered)
    for slot, name in _static_slots(elf, relocations, addresses).items():
        slots.setdefault(name, set()).add(slot)
    every_slot = {slot: name for name, found in slots.items() for slot in found}
    plt = _plt_entries(elf, every_slot, got_base) if every_slot else {}
    targets = []
    for name in ordered:
        entries = frozenset(va for va, n in plt.items() if n == name)
        if name in addresses or slots.get(name) or entries:
            targets.append(Target(name, addresses.get(name), frozenset(slots.get(name, ())), entries))
    if not elf.arch.x86_64 and got_base is None and any(t.slots for t in targets):
        raise elf.fail(
            "a profiling target has a GOT slot but the file has no GOT base (_GLOBAL_OFFSET_TABLE_, DT_PLTGOT)"
        )
    return Targets(elf.arch, tuple(targets), got_base, from_calls)


def profiling_runtime(elf: ElfFile) -> bool:
    """Whether glibc's profiling runtime is linked into this file: defined in .dynsym, or its messages in the image."""
    dynsym = elf.dynamic_symbols
    if dynsym is not None and any(dynsym.place(i)[0] != SHN_UNDEF for i in dynsym.named(_GMON_FUNCTIONS)):
        return True
    loaded = [s for s in elf.sections if s.sh_flags & SHF_ALLOC and s.sh_type != SHT_NOBITS and not s.is_exec]
    data = elf.data
    return any(data.find(m, s.sh_offset, s.sh_offset + s.sh_size) >= 0 for s in loaded for m in _GMON_MESSAGES)


def _defined(elf: ElfFile, tables: list[SymbolTable], names: list[str]) -> dict[str, int]:
    """name -> address of each target the file defines in its code."""
    found: dict[str, int] = {}
    for table in tables:
        for index, name in table.named(names).items():
            shndx, value = table.place(index)
            if shndx != SHN_UNDEF and value and elf.section_at(value) in elf.code_sections:
                found.setdefault(name, value)
    return found


def _recorded_targets(elf: ElfFile, recorded: Mapping[int, bool | None], got_base: int | None) -> dict[str, int]:
    """Where the live calls at these recorded sites go: __fentry__ from a function's entry, mcount from inside one."""
    found: dict[str, set[int]] = {}
    for va, entry in recorded.items():
        code = elf.read(va, 6)
        dest = None
        if code[:1] == b"\xe8" and len(code) >= 5:
            dest = branch_destination(code, va, 5)
        elif code[:2] == b"\x67\xe8" and len(code) == 6:
            dest = branch_destination(code, va, 6)
        elif code[:2] in (b"\xff\x15", b"\xff\x93") and len(code) == 6:  # through a slot the static linker filled
            disp = int.from_bytes(code[2:6], "little", signed=True)
            slot = va + 6 + disp if elf.arch.x86_64 else (got_base + disp if got_base is not None else None)
            word = (
                elf.read(slot, elf.arch.word)
                if slot is not None and code[1] == (0x15 if elf.arch.x86_64 else 0x93)
                else b""
            )
            dest = int.from_bytes(word, "little") if len(word) == elf.arch.word else None
        if dest is not None and elf.section_at(dest) in elf.code_sections:
            found.setdefault("__fentry__" if entry else "mcount", set()).add(dest)
    if any(len(dests) > 1 for dests in found.values()):
        raise elf.fail(
            "the calls at the sites __mcount_loc lists go to more than one place, and no symbol says which is mcount"
        )
    return {name: dests.pop() for name, dests in found.items()}


def _got_base(elf: ElfFile, tables: list[SymbolTable]) -> int | None:
    for table in tables:
        for index in table.named(["_GLOBAL_OFFSET_TABLE_"]):
            return table.place(index)[1]
    pltgot = elf.dynamic_entry(DT_PLTGOT)
    if pltgot:
        return pltgot
    got_plt = elf.section_named(".got.plt")
    return got_plt.sh_addr if got_plt is not None else None


def dynamic_relocations(elf: ElfFile) -> Relocations | None:
    """The dynamic relocation tables, as columns: those linked to .dynsym, and those of only
    R_*_RELATIVE and R_*_IRELATIVE entries that link to no symbol table (a static program's)."""
    dynsym = elf.dynamic_symbols
    dynsym_index = next((s.shndx for s in elf.sections if s.sh_type == SHT_DYNSYM), None)
    tables: list[tuple[Section, Section | None]] = [
        (s, None)
        for s in elf.sections
        if s.sh_type in (SHT_REL, SHT_RELA) and s.sh_flags & SHF_ALLOC and s.sh_link in (0, dynsym_index)
    ]
    if not tables:
        return None
    return elf.relocations(tables, len(dynsym) if dynsym is not None else 1)


def relative(relocations: Relocations | None, arch: Arch) -> dict[int, int]:
    """Where each R_*_RELATIVE entry writes -> its addend (0 on REL, whose addend is the word it relocates)."""
    if relocations is None:
        return {}
    return {
        relocations.r_offset[i]: relocations.r_addend[i]
        for r_type in sorted(arch.relative_types)
        if r_type in relocations.values  # r_info is the type alone: no symbol
        for i in relocations.holding(r_type)
    }


def _dynamic_slots(elf: ElfFile, relocations: Relocations | None, names: list[str]) -> dict[str, set[int]]:
    """name -> the GOT slots the dynamic linker fills with it."""
    dynsym = elf.dynamic_symbols
    if relocations is None or dynsym is None:
        return {}
    wanted = dynsym.named(names)
    arch, slots = elf.arch, dict[str, set[int]]()
    for r_info in relocations.values:
        if arch.r_type(r_info) in (R_GLOB_DAT, R_JUMP_SLOT) and (name := wanted.get(arch.r_sym(r_info))):
            slots.setdefault(name, set()).update(relocations.r_offset[i] for i in relocations.holding(r_info))
    return slots


def text_relocations(elf: ElfFile, names: Iterable[str]) -> list[int]:
    """The addresses in code that a dynamic relocation against a target writes (-fno-pie code linked -pie on
    i386: `e8` calls the dynamic loader fills in at every start, through DT_TEXTREL)."""
    dynsym, relocations = elf.dynamic_symbols, dynamic_relocations(elf)
    if relocations is None or dynsym is None:
        return []
    wanted, arch = dynsym.named(names), elf.arch
    found = []
    for r_info in relocations.values:
        if arch.r_sym(r_info) in wanted and arch.r_type(r_info) not in (R_GLOB_DAT, R_JUMP_SLOT):
            found += [
                va
                for va in (relocations.r_offset[i] for i in relocations.holding(r_info))
                if (sec := elf.section_at(va)) is not None and sec.is_code
            ]
    return sorted(found)


def _static_slots(elf: ElfFile, relocations: Relocations | None, addresses: dict[str, int]) -> dict[int, str]:
    """GOT slots the static linker filled with a target's address: in their word, or in the addend
    of the R_*_RELATIVE entry that relocates them (a static PIE)."""
    if not addresses:
        return {}
    by_address = {address: name for name, address in reversed(addresses.items())}
    arch, found = elf.arch, {}
    relative_ = relative(relocations, arch)
    for got in elf.sections:
        if not got.name.startswith(".got") or not got.sh_flags & SHF_WRITE or got.sh_type != SHT_PROGBITS:
            continue
        raw = elf.section_data(got)
        for at in range(0, len(raw) - arch.word + 1, arch.word):
            va = got.sh_addr + at
            value = relative_.get(va) if arch.rela else None
            if value is None and (elf.e_type == ET_EXEC or va in relative_):
                value = int.from_bytes(raw[at : at + arch.word], "little")
            if value in by_address:
                found[va] = by_address[value]
    return found


def is_plt(sec: Section) -> bool:
    """Whether a code section is a PLT, whose entries jmp through the targets' GOT slots (`ff 25`, as gcc
    -fno-plt's tail jmp to __cyg_profile_func_exit does): the way to a target, never a site."""
    return sec.name.startswith((".plt", ".iplt"))


def site_sections(elf: ElfFile) -> list[Section]:
    """The code sections that can hold a site: all but the PLTs."""
    return [sec for sec in elf.code_sections if not is_plt(sec)]


def _plt_entries(elf: ElfFile, slots: dict[int, str], got_base: int | None) -> dict[int, str]:
    """PLT entry -> the target whose slot its indirect jmp goes through, in every .plt* section."""
    arch, entries = elf.arch, {}
    for sec in elf.code_sections:
        if not is_plt(sec):
            continue
        code = bytes(elf.section_data(sec))
        previous_start, previous_end = -1, -1
        for va, size, _mnemonic, _ops in decode_lite(code, arch, sec.sh_addr):
            at = va - sec.sh_addr
            raw = code[at : at + size]
            body = raw.lstrip(b"\xf2\x3e")  # bnd and notrack prefixes
            slot = None
            if len(body) == 6 and body[:2] in (b"\xff\x25", b"\xff\xa3"):
                disp = int.from_bytes(body[2:6], "little", signed=True)
                if body[1] == 0xA3:
                    slot = (got_base + disp) & 0xFFFFFFFF if got_base is not None else None
                else:
                    slot = va + size + disp if arch.x86_64 else disp & 0xFFFFFFFF
            if slot in slots:
                endbr = previous_end == va and code[previous_start - sec.sh_addr : at] in ENDBR
                entries[previous_start if endbr else va] = slots[slot]
            previous_start, previous_end = va, va + size
    return entries
