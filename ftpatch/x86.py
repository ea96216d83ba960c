"""x86 encodings: the call forms gcc emits for profiling, and the nops that replace them.

Pure functions over bytes and two tables. Capstone is imported only by the
functions that decode, so that importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from functools import cache


class Form(StrEnum):
    """How a site calls its target, named after the instruction's addressing."""

    REL32 = "rel32"  # e8 rel32: call mcount / mcount@plt
    GOTPCREL = "gotpcrel"  # ff 15 disp32: call *mcount@GOTPCREL(%rip)
    GOT_EBX = "got-ebx"  # ff 93 disp32: call *mcount@GOT(%ebx), i386 PIC
    ADDR32_REL32 = "addr32-rel32"  # 67 e8 rel32: a GOTPCRELX call ld resolved locally (static)
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


@dataclass(frozen=True)
class NopStyle:
    """One named choice of nop, with a member for each site length."""

    name: str
    nop5: bytes
    nop6: bytes
    x86_64: bool  # whether both members are also nops in 64-bit mode
    about: str

    def for_length(self, length: int) -> bytes:
        return self.nop5 if length == 5 else self.nop6


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
        NopStyle(
            "lea",
            bytes.fromhex("3e8d742600"),
            bytes.fromhex("8db600000000"),
            False,
            "lea 0x0(%esi,%eiz,1),%esi: today's kernel on i386",
        ),
    )
}

DEFAULT_STYLE = {True: "p6", False: "lea"}  # keyed by "is x86-64"


def styles_for(x86_64: bool) -> list[NopStyle]:
    return [s for s in NOP_STYLES.values() if s.x86_64 or not x86_64]


def known_nop(code: bytes, x86_64: bool) -> NopStyle | None:
    """The style whose member of this length is exactly `code`, if any."""
    for style in styles_for(x86_64):
        if style.for_length(len(code)) == code:
            return style
    return None


@cache
def nops(length: int, x86_64: bool) -> frozenset[bytes]:
    """Every known nop of `length` bytes."""
    return frozenset(style.for_length(length) for style in styles_for(x86_64))


def hexbytes(code: bytes) -> str:
    """Bytes the way ftrace_bug prints them: 0f:1f:44:00:00."""
    return code.hex(":")


@dataclass(frozen=True)
class Instruction:
    offset: int
    size: int
    text: str


def decode(code: bytes, x86_64: bool, address: int = 0) -> Iterator[Instruction]:
    """Linear decode of `code`; stops at the first byte capstone cannot decode."""
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if x86_64 else capstone.CS_MODE_32)
    for address_, size, mnemonic, op_str in md.disasm_lite(code, address):
        yield Instruction(address_, size, f"{mnemonic} {op_str}".strip())


def describe(code: bytes, x86_64: bool) -> str:
    """The instructions in `code`, for error messages: 'ud2; nop; nop'."""
    decoded = list(decode(code, x86_64))
    text = "; ".join(i.text for i in decoded)
    if sum(i.size for i in decoded) < len(code):
        text = f"{text}; (undecodable)" if text else "(undecodable)"
    return text


def is_boundary(code: bytes, x86_64: bool, start: int, target: int) -> bool:
    """Whether decoding from `start` reaches an instruction beginning exactly at `target`."""
    for ins in decode(code[start:target], x86_64, start):
        if ins.offset + ins.size == target:
            return True
    return start == target
