"""x86 encodings: the three machines (x86-64, x32, i386) and their layouts, the call forms compilers emit for profiling,
and the nops that replace them.

Pure tables and functions over bytes. Capstone is imported only by the
functions that decode, so that importing this module stays cheap.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache

from .layout import ELF32, ELF64, Layout


class Form(StrEnum):
    """How a site calls its target, named after the instruction's addressing."""

    REL32 = "rel32"  # e8 rel32: call mcount / mcount@plt
    GOTPCREL = "gotpcrel"  # ff 15 disp32: call *mcount@GOTPCREL(%rip)
    GOT_EBX = "got-ebx"  # ff 93 disp32: call *mcount@GOT(%ebx), i386 PIC
    ADDR32_REL32 = "addr32-rel32"  # 67 e8 rel32: a GOT call the linker resolved locally (static)
    TAIL = "tail-rel32"  # e9 rel32: jmp mcount@plt (clang's LTO), jmp __cyg_profile_func_exit (a void function)
    TAIL_GOTPCREL = "tail-gotpcrel"  # ff 25 disp32: jmp *__cyg_profile_func_exit@GOTPCREL(%rip), gcc -fno-plt
    RECORDED = "mcount-loc"  # no call at all: gcc -mnop-mcount, listed in __mcount_loc
    PATCHABLE = "patchable"  # no call at all: -fpatchable-function-entry's nops, listed in __patchable_function_entries


OPCODES = {
    Form.REL32: b"\xe8",
    Form.GOTPCREL: b"\xff\x15",
    Form.GOT_EBX: b"\xff\x93",
    Form.ADDR32_REL32: b"\x67\xe8",
    Form.TAIL: b"\xe9",
    Form.TAIL_GOTPCREL: b"\xff\x25",
}
# The jmps that are a call and the function's return at once: their nop is the return alone.
TAILS = frozenset({Form.TAIL, Form.TAIL_GOTPCREL})
# The tail jmp that a call relocation of a call form also relocates, in an object.
TAIL_OF = {Form.REL32: Form.TAIL, Form.GOTPCREL: Form.TAIL_GOTPCREL}


# A RECORDED site is the one 5-byte nop gcc put there; a PATCHABLE one the 5 bytes a call takes of the nops
# -fpatchable-function-entry left where the function is entered (its site's bytes run on to the end of the nop
# the call splits: PATCHABLE_NOPS).
SITE_LENGTH = {
    Form.REL32: 5,
    Form.GOTPCREL: 6,
    Form.GOT_EBX: 6,
    Form.ADDR32_REL32: 6,
    Form.TAIL: 5,
    Form.TAIL_GOTPCREL: 6,
    Form.RECORDED: 5,
    Form.PATCHABLE: 5,
}

# What -fpatchable-function-entry=N,M leaves where the function is entered, up to the first instruction boundary 5
# bytes or more in (patchable.place): the nop a call splits, by the id an object's record keeps of it
# (nopped.patchable_record). Measured, gcc 12 and clang 14: gcc writes N-M one-byte nops (5 of them, whatever
# N-M >= 5); clang on x86-64 one nop of N-M bytes up to 10, and for N-M > 10 a 10-byte nop first; clang on i386
# 66 90 66 90 90 for 5, and 66 90 pairs for more (6 bytes to the first boundary past 5).
PATCHABLE_NOPS = {
    1: b"\x90" * 5,
    2: bytes.fromhex("0f1f440008"),
    3: bytes.fromhex("6690669090"),
    4: bytes.fromhex("660f1f440008"),
    5: bytes.fromhex("0f1f8000020000"),
    6: bytes.fromhex("0f1f840000020000"),
    7: bytes.fromhex("660f1f840000020000"),
    8: bytes.fromhex("2e660f1f840000020000"),
    9: bytes.fromhex("669066906690"),
}
# Those longer than a call: a call over one leaves bytes of it that are no instruction (clang's 8-byte nop ends
# 02 00 00), so a nop of FILLERS follows the call, to the end of the compiler's.
LONG_PATCHABLE_NOPS = tuple(nop for nop in PATCHABLE_NOPS.values() if len(nop) > 5)
# What `nop` writes at such a site in a linked file, which has no room to remember the compiler's bytes: always
# this one (clang's own for N-M = 5, and a nop uftrace's `record -P` patches), so that the file differs only at its
# sites. Over a longer nop, the filler `call` wrote after the call stays: 0f 1f 44 00 08 0f 1f 00 for clang's 8.
LINKED_PATCHABLE_NOP = PATCHABLE_NOPS[2]
# The multi-byte nops of Intel's manual (SDM vol. 2B, NOP), by length: what fills the rest of a compiler's long nop
# after a call. Only the one-byte 90 ever follows a call on i386 (clang's 66 90 pairs, 6 bytes); the 0f 1f ones
# follow only clang's x86-64 long nops, which are 0f 1f nops themselves.
FILLERS = {
    1: b"\x90",
    2: bytes.fromhex("6690"),
    3: bytes.fromhex("0f1f00"),
    4: bytes.fromhex("0f1f4000"),
    5: bytes.fromhex("0f1f440000"),
}


def filled(call: bytes, length: int) -> bytes:
    """A call over `length` bytes of a compiler's nop: the call, then the nop that fills the rest exactly."""
    return call if length <= len(call) else call + FILLERS[length - len(call)]


# The relocation type gas writes for `call NAME` outside PIC code, by whether entries have addends (RELA): what
# `call` adds where gcc -mnop-mcount or -fpatchable-function-entry left a nop (prepare.py).
CALL_TYPE = {True: 4, False: 2}  # R_X86_64_PLT32, R_386_PC32

# endbr64 and endbr32, which -fcf-protection puts at an address-taken function's entry, before its __fentry__ call.
ENDBR = (bytes.fromhex("f30f1efa"), bytes.fromhex("f30f1efb"))


def branch_destination(code: bytes, va: int, length: int) -> int:
    """Where the relative call or jmp of `length` bytes at `va`, whose rel32 ends `code`'s first `length`
    bytes, goes: its next instruction's address plus the displacement."""
    return va + length + int.from_bytes(code[length - 4 : length], "little", signed=True)


def disp_offset(form: Form) -> int:
    """Where the 32-bit displacement, and so the relocation, starts inside the site."""
    return len(OPCODES[form])


@cache
def call_bytes(form: Form, disp: int) -> bytes:
    return OPCODES[form] + disp.to_bytes(4, "little", signed=True)


@dataclass(frozen=True, eq=False)
class Arch:
    """What differs between an x86-64, an x32 and an i386 file, made once when the file is read and
    passed along, as recordmcount.h is compiled once per word size.

    The instruction set (`x86_64`: the machine, e_machine) and the word (`word`: the ELF class's,
    held by `layout`) are two facts: x32 (gcc -mx32) is the x86-64 instruction set with ELFCLASS32's
    4-byte words. Ask the one that is meant.

    There are three, X86_64, X32 and I386, compared by identity (and so cached by): one that
    crosses a process boundary comes back as the same one.
    """

    name: str
    e_machine: int
    layout: Layout  # the ELF class's: the word size, the symbol and header layouts, r_info's split
    rela: bool  # call relocations carry their addend in the entry (x86-64), not in the bytes (i386)
    call_forms: Mapping[int, Form]  # call relocation type -> the form of its site
    reloc_names: Mapping[int, str]  # the relocation types ftpatch names itself (pyelftools lacks some)
    pic_form: Form  # the 6-byte form of position-independent code
    default_nop: str
    capstone_mode: int  # capstone's CS_MODE_64 or CS_MODE_32
    mcount_loc_entry: int  # bytes in an __mcount_loc entry: gcc writes .quad for x86-64 code, x32 too
    relative_types: frozenset[int]  # R_*_RELATIVE: a dynamic relocation whose addend is the address it writes

    @property
    def word(self) -> int:
        """Bytes in an address, a GOT slot, r_offset, r_info and r_addend: the ELF class's, not the machine's."""
        return self.layout.word

    @property
    def r_sym_shift(self) -> int:
        return self.layout.r_sym_shift

    def r_sym(self, r_info: int) -> int:
        return r_info >> self.r_sym_shift

    def r_type(self, r_info: int) -> int:
        return r_info & ((1 << self.r_sym_shift) - 1)

    def reloc_name(self, r_type: int) -> str:
        if r_type in self.reloc_names:
            return self.reloc_names[r_type]
        from elftools.elf.enums import ENUM_RELOC_TYPE_i386, ENUM_RELOC_TYPE_x64

        table = ENUM_RELOC_TYPE_x64 if self.e_machine == X86_64.e_machine else ENUM_RELOC_TYPE_i386
        return next((k for k, v in table.items() if v == r_type), f"type {r_type}")

    def call_addend(self, form: Form) -> int:
        """The addend of a call relocation: -4 in a RELA entry; in a REL site's bytes, what the form holds."""
        return -4 if self.rela or form in (Form.REL32, Form.TAIL) else 0

    @property
    def x86_64(self) -> bool:
        """The x86-64 instruction set (x86-64 and x32): RIP-relative addressing, and the 64-bit nops; not the word."""
        return self.e_machine == X86_64.e_machine

    def __reduce__(self) -> tuple[Callable[[str], Arch], tuple[str]]:
        return _arch_named, (self.name,)


X86_64 = Arch(
    name="x86_64",
    e_machine=62,
    layout=ELF64,
    rela=True,
    call_forms={2: Form.REL32, 4: Form.REL32, 9: Form.GOTPCREL, 41: Form.GOTPCREL},
    reloc_names={
        0: "R_X86_64_NONE",
        1: "R_X86_64_64",
        2: "R_X86_64_PC32",
        4: "R_X86_64_PLT32",
        9: "R_X86_64_GOTPCREL",
        41: "R_X86_64_GOTPCRELX",
        42: "R_X86_64_REX_GOTPCRELX",
    },
    pic_form=Form.GOTPCREL,
    default_nop="p6",
    capstone_mode=1 << 3,  # capstone.CS_MODE_64, without importing capstone
    mcount_loc_entry=8,
    relative_types=frozenset({8}),  # R_X86_64_RELATIVE
)
# gcc -mx32: ELFCLASS32, RELA, the x86-64 instruction set and its relocation types, 4-byte GOT slots.
X32 = Arch(
    name="x32",
    e_machine=X86_64.e_machine,
    layout=ELF32,
    rela=True,
    call_forms=X86_64.call_forms,
    reloc_names=X86_64.reloc_names,
    pic_form=X86_64.pic_form,
    default_nop=X86_64.default_nop,
    capstone_mode=X86_64.capstone_mode,
    mcount_loc_entry=8,  # gcc -mx32 -mrecord-mcount writes .quad entries, relocated by R_X86_64_64
    # R_X86_64_RELATIVE writes 4 bytes, R_X86_64_RELATIVE64 8: bfd relocates gcc's 8-byte entries in a PIE with both.
    relative_types=frozenset({8, 38}),
)
I386 = Arch(
    name="i386",
    e_machine=3,
    layout=ELF32,
    rela=False,
    call_forms={2: Form.REL32, 4: Form.REL32, 3: Form.GOT_EBX, 43: Form.GOT_EBX},
    reloc_names={
        0: "R_386_NONE",
        1: "R_386_32",
        2: "R_386_PC32",
        3: "R_386_GOT32",
        4: "R_386_PLT32",
        43: "R_386_GOT32X",
    },
    pic_form=Form.GOT_EBX,
    default_nop="lea",
    capstone_mode=1 << 2,  # capstone.CS_MODE_32
    mcount_loc_entry=4,
    relative_types=frozenset({8}),  # R_386_RELATIVE
)
ARCHES = {(arch.e_machine, arch.layout.elfclass): arch for arch in (X86_64, X32, I386)}


def _arch_named(name: str) -> Arch:
    return next(arch for arch in ARCHES.values() if arch.name == name)


@dataclass(frozen=True)
class NopStyle:
    """One named choice of nop, with a member for each site: its length, its place, the call it replaced.

    At a function's entry (__fentry__) a site gets the member tracers patch (uftrace's
    `record -P` takes `0f 1f 44 00 00` or `0f 1f 44 00 08` at symbol+0, never a 6-byte nop, so
    p6 writes a 6-byte entry site as the second and a one-byte nop). Inside a function (mcount,
    after the prologue) it gets a member no assembler pads with where the plain one is also
    padding, and p6's and lea's say which call they replaced: a linked file has no relocation
    at a site, and `call` must tell ftpatch's nop from a loop head's alignment by its bytes.

    A tag (1 or 2) marks the nops of an i386 object, whose REL entries have no addend to
    keep what the nop'd relocation was: it says which of the form's two relocation types the
    site had. Tag 0 is no tag: every other file, and files nop'd before tags.

    A slot (1 or 2, sites.slot) says which of two targets a nop inside a function replaced,
    where functions call both: __cyg_profile_func_enter and __cyg_profile_func_exit
    (-finstrument-functions). Slot 0 is the one target of its kind, mcount's. A style with no
    member for a slot gives b"", which `nop` refuses as a nop `call` could not read back.
    """

    name: str
    x86_64: bool  # whether every member is also a nop in 64-bit mode
    about: str

    def nop(self, form: Form, entry: bool, tag: int = 0, slot: int = 0) -> bytes:
        """What `nop` writes over a site of this form, at a function's entry or inside it."""
        if entry and slot:
            return b""  # the targets that need a slot are called inside a function
        if form in TAILS:
            return tail_ret(slot, tag, SITE_LENGTH[form])
        return _MEMBERS[self.name](SITE_LENGTH[form], None if entry else form, tag, slot)

    @property
    def nop5(self) -> bytes:
        return self.nop(Form.REL32, True)

    @property
    def nop6(self) -> bytes:
        return self.nop(Form.GOTPCREL, True)


def _p6(length: int, inner: Form | None, tag: int, slot: int) -> bytes:
    # The disp8 of a P6 nop is never used (a nopl touches no memory): gas pads with 00. ftpatch writes 08
    # at an entry, which uftrace's `record -P` patches as it patches 00 (clang's -fpatchable-function-entry
    # writes it too), and f1..f4 inside a function, one per form. The SIB byte is the tag and the slot.
    mark = _P6_MARKS[inner] if inner else 0x08
    nop = bytes((0x0F, 0x1F, 0x44, tag | slot << 2, mark))
    if length == 5:
        return nop
    return b"\x66" + nop if inner else nop + b"\x90"


def _o16(length: int, inner: Form | None, tag: int, slot: int) -> bytes:
    # A segment prefix in place of the first operand-size prefix is the tag, and fs or gs in place of
    # the second the slot.
    return bytes((_SEGMENT[tag], _O16_SLOTS[slot])) + b"\x66" * (length - 3) + b"\x90"


def _jmp(length: int, inner: Form | None, tag: int, slot: int) -> bytes:
    # The filler is never executed; int3 traps anything that jumps into it. Its last byte is the tag,
    # its first the slot.
    return bytes((0xEB, length - 2, _FILLER_SLOTS[slot])) + b"\xcc" * (length - 4) + bytes((0xCC ^ tag,))


def _lea(length: int, inner: Form | None, tag: int, slot: int) -> bytes:
    # The SIB's scale bits, ignored without an index register, are the tag. gas pads i386 code with
    # the 6-byte lea, so inside a function the 5-byte one with an operand-size prefix takes its place
    # (a lea of %esi into %si, which it leaves as it was), its segment prefix naming the form.
    # The slot is the register, loaded with itself: %esi, %edi, %ebp. Not a segment prefix: the last
    # five bytes of a 6-byte lea (26 8d 74 26 00, 36 8d 74 26 00) must stay no 5-byte nop of ftpatch's,
    # or an i386 object's nop'd got-ebx site would read back as a 5-byte site too (nopped._tagged).
    reg = _LEA_REGISTERS[slot]
    modrm, sib = 0x44 | reg << 3, tag << 6 | 0x20 | reg
    if length == 5:  # ds at an entry, as the kernel's; cs inside a function, which no assembler pads with
        return bytes((0x3E if inner is None else 0x2E, 0x8D, modrm, sib, 0x00))
    if inner is None:
        return bytes.fromhex("8db600000000") if tag == 0 else b""  # no i386 object has a 6-byte entry site
    return bytes((0x66, _LEA_SEGMENTS[inner], 0x8D, modrm, sib, 0x00))


# A jmp to mcount is mcount's call and the function's return at once: its nop is the return alone, whatever the
# style. The filler never runs: int3, and an int1 that no compiler pads with, to mark it as ftpatch's.
# Its third byte is the tag, its fourth the slot; the 6-byte one (for ff 25) ends f2 cc.
TAIL_RET = bytes.fromhex("c3cccccc f1")
_P6_MARKS = {Form.REL32: 0xF1, Form.GOTPCREL: 0xF2, Form.GOT_EBX: 0xF3, Form.ADDR32_REL32: 0xF4}
_SEGMENT = (0x66, 0x2E, 0x3E)  # by tag; 0x66 is no segment prefix at all
_O16_SLOTS = (0x66, 0x64, 0x65)  # by slot: none, fs, gs
# By slot: int3, hlt, cmc, one byte each in both modes, so that decoding across the filler stays in step
# (0xcd would take the next byte, 0xce is no instruction on x86-64).
_FILLER_SLOTS = (0xCC, 0xF4, 0xF5)
_LEA_REGISTERS = (6, 7, 5)  # by slot: %esi, %edi, %ebp
_LEA_SEGMENTS = {Form.REL32: 0x3E, Form.GOTPCREL: 0x26, Form.GOT_EBX: 0x26, Form.ADDR32_REL32: 0x36}
_MEMBERS = {"p6": _p6, "o16": _o16, "jmp": _jmp, "lea": _lea}
TAGS = (1, 2)
SLOTS = (1, 2)


def tail_ret(slot: int, tag: int = 0, length: int = 5) -> bytes:
    """The nop of a tail jmp to a target: the return alone, its filler naming the tag and the slot."""
    return TAIL_RET[:2] + bytes((0xCC ^ tag, _FILLER_SLOTS[slot])) + (TAIL_RET[4:] if length == 5 else b"\xf2\xcc")


NOP_STYLES: dict[str, NopStyle] = {
    style.name: style
    for style in (
        NopStyle("p6", True, "nopl 0x8(%eax,%eax,1): the P6 long nop; today's kernel on x86-64, with 0x0"),
        NopStyle("o16", True, "nop with operand-size prefixes: the 2008 kernel's fallback"),
        NopStyle("jmp", True, "jmp to the end of the site, int3 filler: the 2008 kernel's last resort"),
        # On x86-64 these lea forms write %esi and clear the top of %rsi: not nops there.
        NopStyle("lea", False, "lea 0x0(%esi,%eiz,1),%esi: today's kernel on i386"),
    )
}


def styles_for(arch: Arch) -> list[NopStyle]:
    return [s for s in NOP_STYLES.values() if s.x86_64 or not arch.x86_64]


@dataclass(frozen=True)
class Nop:
    """What a nop ftpatch knows says of the site it replaced."""

    style: str
    entry: bool | None  # written only at a function's entry (True), only inside one (False), or at both (None)
    form: Form | None  # the form it names, where it names one
    tag: int
    padding: bool  # what a compiler's own output may also hold there: no mark of a site by itself
    slot: int = 0  # which of the targets called inside a function it replaced (NopStyle)


# What a compiler's or a kernel's output may hold: gas pads with 0f 1f 44 00 00 and 66 0f 1f 44 00 00
# (x86-64) or 8d b6 00 00 00 00 (i386), and the 5-byte pad may precede a nop instruction; clang's
# -fpatchable-function-entry writes 0f 1f 44 00 08 at an entry; the kernel's jump labels are
# 0f 1f 44 00 00 and, on i386, 3e 8d 74 26 00.
_PADDING = {
    bytes.fromhex(h)
    for h in ("0f1f440000", "660f1f440000", "0f1f44000090", "8db600000000", "0f1f440008", "0f1f44000890", "3e8d742600")
}
# Nops others write at profiling sites, which ftpatch takes as nop'd sites where a site is known to be:
# the kernel's and gcc -mnop-mcount's, and uftrace's `record -U`'s.
_FOREIGN = {
    bytes.fromhex("0f1f440000"): Nop("p6", None, None, 0, True),
    bytes.fromhex("660f1f440000"): Nop("p6", None, None, 0, True),
    # gcc's -fpatchable-function-entry, which `nop` gives back to an object that `call --target` made a call.
    b"\x90" * 5: Nop("gcc", True, None, 0, True),
    bytes.fromhex("6690669090"): Nop("clang", True, None, 0, True),  # clang's, on i386
}


@cache
def known_nops(arch: Arch) -> dict[bytes, Nop]:
    """Every nop ftpatch writes on this machine, or takes for a nop'd site, and what it says."""
    places: dict[bytes, tuple[str, int, int, set[Form | None]]] = {}
    for style in styles_for(arch):
        for tag in (0, *TAGS):
            for form in dict.fromkeys((Form.REL32, arch.pic_form, Form.ADDR32_REL32)):
                for slot in (0, *SLOTS):
                    for inner in (None, form) if not slot else (form,):  # a slot only inside a function
                        code = _MEMBERS[style.name](SITE_LENGTH[form], inner, tag, slot)
                        if code:
                            places.setdefault(code, (style.name, tag, slot, set()))[3].add(inner)
    found = dict(_FOREIGN)
    for tag in (0, *TAGS) if not arch.rela else (0,):
        for slot in (0, *SLOTS):
            found[tail_ret(slot, tag)] = Nop("ret", False, Form.TAIL, tag, False, slot)
            if arch.x86_64:
                found[tail_ret(slot, tag, 6)] = Nop("ret", False, Form.TAIL_GOTPCREL, tag, False, slot)
    for code, (name, tag, slot, inners) in places.items():
        entry = None if len(inners) > 1 and None in inners else None in inners
        named = next(iter(inners)) if len(inners) == 1 else None
        found[code] = Nop(name, entry, named, tag, code in _PADDING, slot)
    return found


@cache
def nops(length: int, arch: Arch) -> frozenset[bytes]:
    """Every nop of `length` bytes ftpatch writes, or takes for a nop'd site where a site is known to be."""
    return frozenset(code for code in known_nops(arch) if len(code) == length)


@cache
def site_openers(arch: Arch) -> bytes:
    """Every byte a site can begin with, a call or a nop, as a 256-byte table (1 where one can): the
    instructions of a prologue begin with none of most of them, and need not be asked about."""
    firsts = {code[0] for code in (*OPCODES.values(), *known_nops(arch))}
    return bytes(int(b in firsts) for b in range(256))


@cache
def site_opener_search(arch: Arch) -> re.Pattern[bytes]:
    """A pattern that finds the next byte a site can begin with (site_openers): the run before it is code
    no site begins in, decoded alike wherever it is."""
    table = site_openers(arch)
    return re.compile(b"[" + b"".join(re.escape(bytes([b])) for b in range(256) if table[b]) + b"]")


@cache
def marked_nops(length: int, arch: Arch) -> frozenset[bytes]:
    """The nops of `length` bytes that only ftpatch writes: where nothing says a site is, these still
    mark one, as no assembler or compiler pads or patches with them."""
    return frozenset(code for code in nops(length, arch) if not known_nops(arch)[code].padding)


@cache
def _cores_of(
    nops_: frozenset[bytes],
) -> tuple[tuple[re.Pattern[bytes], tuple[tuple[int, int, frozenset[bytes]], ...]], ...]:
    """These nops by the few bytes at their heart: (a search for the core where what follows it begins one of
    them, ((where the core sits in a nop, the nop's length, those nops), ... longest first))."""
    cores: dict[bytes, dict[tuple[int, int], set[bytes]]] = {}
    for nop in nops_:
        core = next((c for c in _CORES if c in nop), nop)
        cores.setdefault(core, {}).setdefault((nop.index(core), len(nop)), set()).add(nop)
    return tuple(
        (
            _core_search(
                core, {nop[at + len(core) : at + len(core) + 2] for (at, _), ns in places.items() for nop in ns}
            ),
            tuple((at, length, frozenset(ns)) for (at, length), ns in sorted(places.items(), key=lambda p: -p[0][1])),
        )
        for core, places in cores.items()
    )


def _core_search(core: bytes, tails: set[bytes]) -> re.Pattern[bytes]:
    """The core, where one of `tails` follows it. A compiler's padding holds p6's core (`0f 1f 44 00 00`): the
    lookahead lets the search pass it over in C, where a loop over bytes.find's hits met ten thousand of them in a
    quarter of the kernel modules. No core begins inside itself (tests/test_find_nops.py), so a match that takes
    the whole core skips no start."""
    ahead = b"(?=" + b"|".join(sorted(map(re.escape, tails))) + b")" if b"" not in tails else b""
    return re.compile(re.escape(core) + ahead)


# What the nops ftpatch writes hold (x86.NopStyle): the p6 nopl's opcode and ModRM, o16's prefixes, lea's opcode
# and ModRM (one per register), a tail site's ret and int3, the jmp of a jmp nop.
_CORES = (b"\x1f\x44", b"\x66\x66\x90", b"\x8d\x74", b"\x8d\x7c", b"\x8d\x6c", b"\xc3\xcc", b"\xeb\x03", b"\xeb\x04")


def find_marked_nops(code: bytes | memoryview, arch: Arch, start: int = 0, end: int | None = None) -> dict[int, bytes]:
    """Offset -> bytes of every nop in `code[start:end]` that only ftpatch writes, found by its bytes alone:
    they may lie inside other instructions (see instruction_starts). A 6-byte nop that holds a 5-byte one
    (o16, lea) counts once. (Not the jmp nops of slot 0: a tail jump over int3 padding to the next function
    looks the same.)"""
    marked = frozenset(n for length in (6, 5) for n in marked_nops(length, arch) if n[0] != 0xEB or n[2] != 0xCC)
    return find_nops(code, marked, start, end)


def find_nops(
    code: bytes | memoryview, wanted: frozenset[bytes], start: int = 0, end: int | None = None
) -> dict[int, bytes]:
    """Offset -> bytes of every nop of `wanted` in `code[start:end]`, the longest where several begin; one that
    begins a byte after a 6-byte one, inside it, is not counted.

    Each nop holds one of a few cores, which a regular expression of the core and what may follow it finds in C
    (_core_search); only where one is are the nops around it compared. A regular expression of the nops
    themselves took twice as long on a kernel module's code (and a lookahead one, tried at every byte, five times
    longer again): it has no literal to look for.
    """
    end = len(code) if end is None else end
    data = code if isinstance(code, bytes) else bytes(code)
    starts: dict[int, bytes] = {}
    for search, places in _cores_of(wanted):
        for match in search.finditer(data, start, end):
            at = match.start()
            for offset, length, candidates in places:
                first = at - offset
                if first < start or first + length > end:
                    continue
                nop = data[first : first + length]
                if nop in candidates and length > len(starts.get(first, b"")):
                    starts[first] = nop
    found: dict[int, bytes] = {}
    for at in sorted(starts):
        if len(found.get(at - 1, b"")) != 6:
            found[at] = starts[at]
    return found


def instruction_starts(code: bytes | memoryview, arch: Arch, address: int, wanted: Iterable[int]) -> set[int]:
    """The addresses among `wanted` at which an instruction begins, decoding `code` (loaded at `address`)
    from its first byte: bytes a search found may lie inside another instruction (`eb 2e` then gas's
    `8d 74 26 00` hold `2e 8d 74 26 00`)."""
    wanted = set(wanted)
    if not wanted:
        return set()
    last, found = max(wanted), set()
    # Up to the longest instruction that can begin at the last address.
    for va, _size, _mnemonic, _ops in decode_lite(bytes(code[: last - address + 15]), arch, address, 64):
        if va in wanted:
            found.add(va)
        if va >= last:
            break
    return found


def nop_slot(code: bytes, arch: Arch) -> int:
    """The slot a nop of ftpatch's says, 0 where it says none (NopStyle)."""
    nop = known_nops(arch).get(code)
    return nop.slot if nop is not None else 0


def inner_form(code: bytes, arch: Arch) -> Form | None:
    """The form an ftpatch nop made inside a function says it replaced, where it says."""
    nop = known_nops(arch).get(code)
    return nop.form if nop is not None and nop.entry is False else None


def written_inside(code: bytes, arch: Arch) -> bool:
    """Whether ftpatch writes these bytes only at a site inside a function, never at an entry."""
    nop = known_nops(arch).get(code)
    return nop is not None and nop.entry is False


@cache
def ftpatch_nops(arch: Arch) -> frozenset[bytes]:
    """Every nop this version of ftpatch writes on this machine."""
    return frozenset(code for code in known_nops(arch) if code not in _FOREIGN)


def written_by_ftpatch(code: bytes, arch: Arch) -> bool:
    """Whether these bytes are a nop this version of ftpatch writes."""
    return code in known_nops(arch) and code not in _FOREIGN


def hexbytes(code: bytes) -> str:
    """Bytes the way ftrace_bug prints them: 0f:1f:44:00:00."""
    return code.hex(":")


@dataclass(frozen=True)
class Instruction:
    offset: int
    size: int
    text: str


@cache
def _disassembler(mode: int) -> object:
    import capstone

    return capstone.Cs(capstone.CS_ARCH_X86, mode)


def decode(code: bytes, arch: Arch, address: int = 0) -> Iterator[Instruction]:
    """Linear decode of `code`; stops at the first byte capstone cannot decode."""
    md = _disassembler(arch.capstone_mode)
    for address_, size, mnemonic, op_str in md.disasm_lite(code, address):  # type: ignore[attr-defined]
        yield Instruction(address_, size, f"{mnemonic} {op_str}".strip())


def decode_lite(
    code: bytes | memoryview, arch: Arch, address: int = 0, batch: int = 0
) -> Iterator[tuple[int, int, str, str]]:
    """(address, size, mnemonic, operands) of each instruction: capstone's fast path, for scanning code.

    capstone decodes the whole buffer before it yields the first instruction. A walk that usually stops
    after a few instructions asks for a `batch` at a time: on sqlite3's 2,700 prologues, capstone's time
    fell from 0.10 s to 0.04 s.
    """
    md = _disassembler(arch.capstone_mode)
    if not batch:
        yield from md.disasm_lite(code, address)  # type: ignore[attr-defined]
        return
    pos = 0
    while pos < len(code):
        decoded = 0
        for ins in md.disasm_lite(code[pos:], address + pos, batch):  # type: ignore[attr-defined]
            yield ins
            decoded += 1
            pos = ins[0] - address + ins[1]
        if decoded < batch:  # the end, or a byte capstone cannot decode
            return


def decode_one(code: bytes | memoryview, arch: Arch, address: int = 0) -> tuple[int, int, str, str] | None:
    """The first instruction of `code` as decode_lite gives it, None where capstone cannot decode it."""
    md = _disassembler(arch.capstone_mode)
    return next(md.disasm_lite(code[:15], address, 1), None)  # type: ignore[attr-defined]


def describe(code: bytes, arch: Arch) -> str:
    """The instructions in `code`, for error messages: 'ud2; nop; nop'."""
    decoded = list(decode(code, arch))
    text = "; ".join(i.text for i in decoded)
    if sum(i.size for i in decoded) < len(code):
        text = f"{text}; (undecodable)" if text else "(undecodable)"
    return text


def is_boundary(code: bytes, arch: Arch, start: int, target: int) -> bool:
    """Whether decoding from `start` reaches an instruction beginning exactly at `target`."""
    for ins in decode(code[start:target], arch, start):
        if ins.offset + ins.size == target:
            return True
    return start == target
