"""What an object gains before `call` can make its sites calls.

A relocation names its function by symbol index, so an object whose sites are
to call a function needs a symbol of that name (`call --target NAME`), and a site
gcc -mnop-mcount left needs the relocation entry gcc writes without that option:
`R_X86_64_PLT32` (`R_386_PC32`) against `__fentry__` at a function's entry,
`mcount` after its prologue, or NAME; a -fpatchable-function-entry site that
`call --target NAME` fills needs that entry against NAME, and a NONE entry
beside it that records the compiler's nop, for `nop` to give back (its addend on
RELA, its place on REL: nopped.REL_PATCHABLE_AT). Those are added (append.with_calls: a
symbol after every other, an entry at the end of its table, nothing renumbered),
and the object is scanned again, so that the plan is made of the bytes written.
A linked file gains nothing: the function must be one it defines or reaches.
"""

from __future__ import annotations

import array
from collections.abc import Sequence

from .append import with_calls
from .archive import is_archive, members, rebuild
from .elf import ET_REL, ElfFile, packed
from .errors import naming
from .nopped import REL_PATCHABLE_AT, nop_id, patchable_record
from .sites import ScanResult, chosen
from .x86 import CALL_TYPE, ENDBR, PATCHABLE_NOPS, Form, disp_offset


def prepared(
    path: str,
    data: bytes,
    scanned: Sequence[ScanResult],
    target: str | None,
    only: Sequence[str],
    exclude: Sequence[str],
) -> bytes | None:
    """The file's bytes with what each object (or archive member) needs for its chosen sites to become calls
    to `target` (or, where it is None, to their own targets); None if none needs anything."""
    grown: dict[int, bytes] = {}
    for result in scanned:
        if result.type != "ET_REL":
            continue
        with naming(result.path):
            new = _object(result, target, only, exclude)
        if new is not None:
            grown[result.base] = new
    if not grown:
        return None
    if not is_archive(data):
        return grown[0]
    return rebuild(path, data, grown)


def with_symbol(path: str, data: bytes, name: str) -> bytes | None:
    """The file's bytes with an undefined symbol `name` added to each object (or static archive member) that has
    none, for `call --target NAME`; None if none lacks it."""
    if not is_archive(data):
        with naming(path):
            return _with_symbol(ElfFile(data), name)
    grown = {}
    for member in members(path, data):
        with naming(f"{path}({member.name})"):
            new = _with_symbol(ElfFile(data[member.offset : member.offset + member.size]), name)
        if new is not None:
            grown[member.offset] = new
    return rebuild(path, data, grown) if grown else None


def _with_symbol(elf: ElfFile, name: str) -> bytes | None:
    if elf.e_type != ET_REL or not elf.has_symtab or elf.symbols.named([name]):
        return None
    return bytes(with_calls(elf, [name], {}))


def _object(result: ScanResult, target: str | None, only: Sequence[str], exclude: Sequence[str]) -> bytes | None:
    elf = ElfFile(result.data)
    arch, symbols = elf.arch, elf.symbols
    wanted: list[str] = []  # names the chosen sites call, in the order of their first site
    recorded: list[tuple[int, int, str]] = []  # -mnop-mcount's chosen sites: (section index, offset, name)
    # -fpatchable-function-entry's chosen sites that hold the compiler's nop: (section index, offset, nop)
    patchable: list[tuple[int, int, bytes]] = []
    for group in result.groups:
        if group.form is Form.PATCHABLE:
            if target is None:  # `call` refuses them: nothing says what they are to call
                continue
            for section, start, held in zip(group.sections, group.starts, group.codes, strict=True):
                if held in PATCHABLE_NOPS.values() and (
                    not (only or exclude) or chosen(result.function_at(section, start), only, exclude)
                ):
                    patchable.append((section.shndx, start, held))
            if patchable and target not in wanted:
                wanted.append(target)
            continue
        for section, start in zip(group.sections, group.starts, strict=True):
            if (only or exclude) and not chosen(result.function_at(section, start), only, exclude):
                continue
            if target is not None and group.form is not Form.RECORDED:
                if target not in wanted:
                    wanted.append(target)
                break  # every site of the group calls the target: one says it
            name = target or (
                group.target if group.form is not Form.RECORDED else _recorded_target(elf, section.shndx, start)
            )
            if name is not None and name not in wanted:
                wanted.append(name)
            if group.form is Form.RECORDED and name is not None:
                recorded.append((section.shndx, start, name))
    present = {name: index for index, name in symbols.named(wanted).items()} if wanted else {}
    missing = [name for name in wanted if name not in present]
    if not missing and not recorded and not patchable:
        return None
    index = {**present, **{name: len(symbols) + i for i, name in enumerate(missing)}}
    code = "Q" if arch.word == 8 else "I"
    by_section: dict[int, array.array[int]] = {}
    r_type = CALL_TYPE[arch.rela]
    for shndx, start, name in recorded:
        entry = [start + disp_offset(Form.REL32), index[name] << arch.r_sym_shift | r_type]
        if arch.rela:
            entry.append(arch.call_addend(Form.REL32) & (1 << 8 * arch.word) - 1)
        by_section.setdefault(shndx, array.array(code)).extend(entry)
    for shndx, start, held in patchable:
        assert target is not None
        # The call's entry, and a NONE entry that records the compiler's nop, which `nop` gives back: on RELA at
        # the same place, its addend the record; on REL, which has no addend, its place the record
        # (nopped.REL_PATCHABLE_AT), where there is one for this nop (else an i386 object's `nop` there refuses).
        entry = [start + disp_offset(Form.REL32), index[target] << arch.r_sym_shift | r_type]
        if arch.rela:
            mask = (1 << 8 * arch.word) - 1
            entry += [arch.call_addend(Form.REL32) & mask, start + disp_offset(Form.REL32), 0]
            entry.append(patchable_record(held, arch.word))
        elif (at := REL_PATCHABLE_AT.get(nop_id(held))) is not None:
            entry += [start + at, 0]
        by_section.setdefault(shndx, array.array(code)).extend(entry)
    return bytes(with_calls(elf, missing, {shndx: packed(words) for shndx, words in by_section.items()}))


def _recorded_target(elf: ElfFile, shndx: int, start: int) -> str:
    """What gcc calls at this -mnop-mcount site without the option: __fentry__ as a function's first
    instruction (-mfentry), mcount after its prologue."""
    function = elf.symbols.function_at(shndx, start) if elf.has_symtab else None
    if function is None:
        return "mcount"
    at = elf.sections[shndx].sh_offset + function.st_value
    first = function.st_value + (4 if elf.data[at : at + 4] in ENDBR else 0)
    return "__fentry__" if start == first else "mcount"
