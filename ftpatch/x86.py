"""x86 encodings: the two machines' layouts, the call forms compilers emit for profiling,
and the nops that replace them.

Pure tables and functions over bytes. Capstone is imported only by the
functions that decode, so that importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache


class Form(StrEnum):
    """How a site calls its target, named after the instruction's addressing."""

    REL32 = "rel32"  # e8 rel32: call mcount / mcount@plt
    GOTPCREL = "gotpcrel"  # ff 15 disp32: call *mcount@GOTPCREL(%rip)
    GOT_EBX = "got-ebx"  # ff 93 disp32: call *mcount@GOT(%ebx), i386 PIC
    ADDR32_REL32 = "addr32-rel32"  # 67 e8 rel32: a GOT call the linker resolved locally (static)
    RECORDED = "mcount-loc"  # no call at all: gcc -mnop-mcount, listed in __mcount_loc


OPCODES = {
    Form.REL32: b"\xe8",
    Form.GOTPCREL: b"\xff\x15",
    Form.GOT_EBX: b"\xff\x93",
    Form.ADDR32_REL32: b"\x67\xe8",
}


# A RECORDED site is the one 5-byte nop gcc put there.
SITE_LENGTH = {Form.REL32: 5, Form.GOTPCREL: 6, Form.GOT_EBX: 6, Form.ADDR32_REL32: 6, Form.RECORDED: 5}


def disp_offset(form: Form) -> int:
    """Where the 32-bit displacement, and so the relocation, starts inside the site."""
    return len(OPCODES[form])


@cache
def call_bytes(form: Form, disp: int) -> bytes:
    return OPCODES[form] + disp.to_bytes(4, "little", signed=True)


@dataclass(frozen=True, eq=False)
class Arch:
    """What differs between an x86-64 and an i386 file, made once when the file is read and
    passed along, as recordmcount.h is compiled once per word size.

    There are two, X86_64 and I386, compared by identity (and so cached by): one that
    crosses a process boundary comes back as the same one.
    """

    name: str
    e_machine: int
    elfclass: int
    word: int  # bytes in an address, r_offset and r_info
    r_sym_shift: int  # r_info >> r_sym_shift is the symbol index
    rela: bool  # call relocations carry their addend in the entry (x86-64), not in the bytes (i386)
    call_forms: Mapping[int, Form]  # call relocation type -> the form of its site
    reloc_names: Mapping[int, str]  # the relocation types ftpatch names itself (pyelftools lacks some)
    pic_form: Form  # the 6-byte form of position-independent code
    default_nop: str
    capstone_mode: int  # capstone's CS_MODE_64 or CS_MODE_32

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
        return -4 if self.rela or form is Form.REL32 else 0

    @property
    def x86_64(self) -> bool:
        return self.word == 8

    def __reduce__(self) -> tuple[Callable[[str], Arch], tuple[str]]:
        return _arch_named, (self.name,)


X86_64 = Arch(
    name="x86_64",
    e_machine=62,
    elfclass=2,
    word=8,
    r_sym_shift=32,
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
)
I386 = Arch(
    name="i386",
    e_machine=3,
    elfclass=1,
    word=4,
    r_sym_shift=8,
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
)
ARCHES = {arch.e_machine: arch for arch in (X86_64, I386)}


def _arch_named(name: str) -> Arch:
    return next(arch for arch in ARCHES.values() if arch.name == name)


@dataclass(frozen=True)
class NopStyle:
    """One named choice of nop, with a member for each site length and for each place a site has.

    A site at a function's entry (__fentry__) gets the plain member: that is what tracers
    patch (uftrace's `record -P` takes `0f 1f 44 00 00` at symbol+0, never a 6-byte nop,
    so p6 writes a 6-byte entry site as that nop and a one-byte one). A site inside a
    function (mcount, after the prologue) gets a member no assembler pads with, where the
    plain one is also padding: linked files have no relocation at a site, and `call` must
    tell ftpatch's nop from a loop head's alignment by its bytes alone.
    """

    name: str
    nop5: bytes
    nop6: bytes
    x86_64: bool  # whether every member is also a nop in 64-bit mode
    about: str
    entry6: bytes = b""  # the 6-byte member at a function's entry, where it differs from nop6
    inner: Mapping[Form, bytes] | None = None  # the member inside a function, by form, where it differs

    def for_length(self, length: int) -> bytes:
        return self.nop5 if length == 5 else self.nop6

    def nop(self, form: Form, entry: bool) -> bytes:
        """What `nop` writes over a site of this form, at a function's entry or inside it."""
        length = SITE_LENGTH[form]
        if entry:
            return self.entry6 if length == 6 and self.entry6 else self.for_length(length)
        return self.inner[form] if self.inner and form in self.inner else self.for_length(length)

    def members(self) -> Iterator[bytes]:
        yield self.nop5
        yield self.nop6
        if self.entry6:
            yield self.entry6
        if self.inner:
            yield from self.inner.values()


# The disp8 of a P6 nop is never used (a nopl touches no memory): gas pads with 00, clang's
# -fpatchable-function-entry writes 08, and ftpatch marks its own with f1..f4, one per form.
_P6_INNER = {
    Form.REL32: bytes.fromhex("0f1f4400f1"),
    Form.GOTPCREL: bytes.fromhex("660f1f4400f2"),
    Form.GOT_EBX: bytes.fromhex("660f1f4400f3"),
    Form.ADDR32_REL32: bytes.fromhex("660f1f4400f4"),
}

# The filler after a jmp is never executed; int3 traps anything that jumps into it.
NOP_STYLES: dict[str, NopStyle] = {
    style.name: style
    for style in (
        NopStyle(
            "p6",
            bytes.fromhex("0f1f440000"),
            bytes.fromhex("660f1f440000"),
            True,
            "nopl 0x0(%eax,%eax,1): the P6 long nop; today's kernel on x86-64",
            entry6=bytes.fromhex("0f1f44000090"),
            inner=_P6_INNER,
        ),
        NopStyle(
            "o16",
            bytes.fromhex("6666666690"),
            bytes.fromhex("666666666690"),
            True,
            "nop with operand-size prefixes: the 2008 kernel's fallback",
        ),
        NopStyle(
            "jmp",
            bytes.fromhex("eb03cccccc"),
            bytes.fromhex("eb04cccccccc"),
            True,
            "jmp to the end of the site, int3 filler: the 2008 kernel's last resort",
        ),
        # On x86-64 these lea forms write %esi and clear the top of %rsi: not nops there.
        # gas pads i386 code with the 6-byte one, so inside a function the 5-byte one with an
        # operand-size prefix takes its place (lea of %esi into %si, which it leaves as it
        # was), its segment prefix saying which call it replaced.
        NopStyle(
            "lea",
            bytes.fromhex("3e8d742600"),
            bytes.fromhex("8db600000000"),
            False,
            "lea 0x0(%esi,%eiz,1),%esi: today's kernel on i386",
            inner={Form.GOT_EBX: bytes.fromhex("663e8d742600"), Form.ADDR32_REL32: bytes.fromhex("662e8d742600")},
        ),
    )
}


def styles_for(arch: Arch) -> list[NopStyle]:
    return [s for s in NOP_STYLES.values() if s.x86_64 or not arch.x86_64]


_INNER_FORMS = {nop: form for style in NOP_STYLES.values() for form, nop in (style.inner or {}).items()}

# Nops others write at profiling sites, which ftpatch takes as nop'd sites too: clang's
# patchable entry and uftrace's `record -U` both use these.
_FOREIGN_NOPS = (bytes.fromhex("0f1f440008"),)


@cache
def nops(length: int, arch: Arch) -> frozenset[bytes]:
    """Every nop of `length` bytes ftpatch writes, or takes for a nop'd site where a site is known to be."""
    members = {m for style in styles_for(arch) for m in style.members()} | set(_FOREIGN_NOPS)
    return frozenset(m for m in members if len(m) == length)


@cache
def marked_nops(length: int, arch: Arch) -> frozenset[bytes]:
    """The nops of `length` bytes that only ftpatch writes: where nothing says a site is, these
    still mark one, as no assembler or compiler pads or patches with them."""
    padding = {bytes.fromhex(h) for h in ("0f1f440000", "660f1f440000", "8db600000000", "0f1f44000090")}
    return frozenset(nops(length, arch) - padding - set(_FOREIGN_NOPS))


def inner_form(code: bytes) -> Form | None:
    """The form an ftpatch nop made inside a function says it replaced, where it says."""
    return _INNER_FORMS.get(code)


@cache
def _inside_only() -> frozenset[bytes]:
    plain = {m for style in NOP_STYLES.values() for m in (style.nop5, style.nop6, style.entry6)}
    return frozenset(m for style in NOP_STYLES.values() for m in (style.inner or {}).values()) - plain


def written_inside(code: bytes) -> bool:
    """Whether ftpatch writes these bytes only at a site inside a function, never at an entry."""
    return code in _inside_only()


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


def decode_lite(code: bytes | memoryview, arch: Arch, address: int = 0) -> Iterator[tuple[int, int, str, str]]:
    """(address, size, mnemonic, operands) of each instruction: capstone's fast path, for scanning code."""
    return _disassembler(arch.capstone_mode).disasm_lite(code, address)  # type: ignore[attr-defined,no-any-return]


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
