"""An object's live sites: the relocation entries against a target, one set of sites per r_info value.

A pass over an object's relocation columns returns what it found as SiteEntries,
which objects.py turns into SiteGroups: the live sites here, the nop'd ones in
nopped.py. Neither pass depends on which ran first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .elf import SHT_NOBITS, ElfFile, Relocations
from .errors import InputError
from .x86 import OPCODES, TAIL_OF, Form, disp_offset, known_nops


@dataclass(frozen=True)
class SiteEntries:
    """Entries (positions in the relocation columns) that make sites of one form, against one target
    symbol with one relocation type, and what each of their entries holds after r_offset now."""

    positions: Sequence[int]
    form: Form
    symbol: int
    r_type: int
    held: bytes
    doubt: str = ""  # why `call` cannot tell which symbol these nop'd entries named (SiteGroup.doubt)


def live(
    elf: ElfFile, entries: Relocations, targets: Mapping[int, str]
) -> tuple[list[SiteEntries], list[tuple[int, InputError]]]:
    """One SiteEntries per r_info value against a target: one symbol and one type, so one form; and, for
    each value that is no call ftpatch patches, its first bad entry and why, so that the caller can refuse
    the first in table order."""
    arch = elf.arch
    found: list[SiteEntries] = []
    problems: list[tuple[int, InputError]] = []
    call_addend = arch.call_addend(Form.REL32)
    for r_info, positions in entries.against(targets).items():
        symbol, r_type = arch.r_sym(r_info), arch.r_type(r_info)
        form = arch.call_forms.get(r_type)
        i = positions[0]
        where = entries.section(i).where
        if form is None:
            # -mcmodel=large: gcc's R_X86_64_PLTOFF64, clang's R_X86_64_GOT64, no single call instruction.
            problems.append(
                (
                    i,
                    elf.fail(
                        f"{arch.reloc_name(r_type)} against {targets[symbol]} at {where(entries.r_offset[i])} is not a call ftpatch patches (-mcmodel=large, or a reference that is no call), relocation {entries.name(i)}"
                    ),
                )
            )
            continue
        if arch.rela and (odd := next((j for j in positions if entries.r_addend[j] != call_addend), None)) is not None:
            problems.append(
                (
                    odd,
                    elf.fail(
                        f"{arch.reloc_name(r_type)} against {targets[symbol]} at {entries.section(odd).where(entries.r_offset[odd])} has addend {entries.r_addend[odd]}, where a call's is {call_addend}: not a call ftpatch patches, relocation {entries.name(odd)}"
                    ),
                )
            )
            continue
        held = call_entry(elf, symbol, r_type)
        found += [
            SiteEntries(at, f, symbol, r_type, held) for f, at in by_opcode(elf, entries, positions, form).items()
        ]
    return found, problems


def by_opcode(elf: ElfFile, entries: Relocations, positions: Sequence[int], form: Form) -> dict[Form, Sequence[int]]:
    """The entries of a relocation type of `form` by the form their site's bytes say: a call relocation
    of an `e8` site also relocates an `e9`, a tail jmp (gcc and clang end a void function with
    `jmp __cyg_profile_func_exit`), a GOT call's an `ff 25` (gcc -fno-plt), and a nop of ftpatch's says
    which it replaced (x86.tail_ret)."""
    jmp = TAIL_OF.get(form)
    if jmp is None:
        return {form: positions}
    data, known, tails = elf.data, known_nops(elf.arch), []
    disp, opcode = disp_offset(jmp), OPCODES[jmp]
    for i in positions:
        sec, r_offset = entries.section(i), entries.r_offset[i]
        if sec.sh_type == SHT_NOBITS or not disp <= r_offset <= sec.sh_size - 4:
            continue  # no site's bytes: objects.py refuses it
        at = sec.sh_offset + r_offset - disp
        nop = known.get(data[at : at + disp + 4])
        if data[at : at + disp] == opcode or (nop is not None and nop.form is jmp):
            tails.append(i)
    if not tails:
        return {form: positions}
    tail = set(tails)
    calls = [i for i in positions if i not in tail]
    return {f: at for f, at in ((form, calls), (jmp, tails)) if at}


def call_entry(elf: ElfFile, symbol: int, r_type: int) -> bytes:
    """What a live call's entry holds after r_offset: r_info, and on RELA the call's addend."""
    arch = elf.arch
    r_info = (symbol << arch.r_sym_shift | r_type).to_bytes(arch.word, "little")
    if not arch.rela:
        return r_info
    return r_info + arch.call_addend(Form.REL32).to_bytes(arch.word, "little", signed=True)
