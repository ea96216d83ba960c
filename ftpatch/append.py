"""Appending sections to a relocatable object, the way recordmcount does: no existing byte moves.

recordmcount's append_func is the model. The new sections, a new copy of each
table that must change, and a new section header table go after the file's
last byte; in place, only the ELF header changes, to point at the new header
table. The old copies stay where they were, unused. So every section keeps its
index and, unless it is one of the copies, its bytes and its offset: what
names a section by index (sh_link, sh_info, st_shndx, SHT_GROUP members)
stays true, and no site byte is touched.

What may be copied:
- the section name table, when a new section's name is not in it already;
- when a section symbol must be created: .symtab, and everything that names a
  symbol by index. ELF puts every local symbol before the first global one
  (.symtab's sh_info), so a new local section symbol goes there and every
  global symbol's index grows by the number created. Relocation tables that
  name a global, .symtab_shndx and clang's .llvm_addrsig are copied with the
  new indices; an SHT_GROUP's signature is its header's sh_info, changed there.

gas and clang leave a section without a section symbol when no relocation
refers to it by one: measured with -ffunction-sections -fno-asynchronous-unwind-tables
(no .eh_frame to refer to each function's section), gcc and clang alike.
ld -r keeps one for every section, so kernel modules always have theirs, and
.eh_frame gives every usual object its own: the copies are the rare case.
"""

from __future__ import annotations

import array
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from .elf import (
    SHF_GROUP,
    SHF_INFO_LINK,
    SHN_LORESERVE,
    SHN_UNDEF,
    SHN_XINDEX,
    SHT_GROUP,
    SHT_REL,
    SHT_RELA,
    SHT_SYMTAB_SHNDX,
    STB_GLOBAL,
    STB_LOCAL,
    STT_NOTYPE,
    STT_SECTION,
    ElfFile,
    Section,
    packed,
    words,
)

SHT_LLVM_ADDRSIG = 0x6FFF4C03  # ULEB128 symbol indices: the symbols whose address is taken
SHT_LLVM_CALL_GRAPH_PROFILE = 0x6FFF4C09

# Fields of a section header, as positions in its unpacked tuple.
_SH_OFFSET, _SH_SIZE, _SH_LINK, _SH_INFO, _SH_ADDRALIGN = 4, 5, 6, 7, 8
_MAX_ALIGN = 1 << 16  # the largest alignment of a table that is copied


@dataclass(frozen=True)
class NewSection:
    """A section to append. Its index will be the file's section count plus its position in the list appended."""

    name: str
    sh_type: int
    sh_flags: int
    data: bytes
    sh_link: int = 0
    sh_info: int = 0
    sh_addralign: int = 1
    sh_entsize: int = 0


@dataclass(frozen=True)
class SectionSymbols:
    """The STT_SECTION symbol each section will have: found in .symtab, or created by `append`."""

    index: dict[int, int]  # section index -> symbol index, in the file append() writes
    created: tuple[int, ...]  # sections whose symbol is created, in the order of their new symbols


def section_symbols(elf: ElfFile, sections: Iterable[int]) -> SectionSymbols:
    """The section symbol of each of these sections; those missing are to be created as the last locals."""
    first_global = _first_global(elf)
    existing = elf.symbols.section_symbols(first_global)
    wanted = sorted(set(sections))
    created = tuple(i for i in wanted if i not in existing)
    index = {i: existing[i] for i in wanted if i in existing}
    index.update((shndx, first_global + n) for n, shndx in enumerate(created))
    return SectionSymbols(index, created)


def _first_global(elf: ElfFile) -> int:
    count, first = len(elf.symbols), elf.symtab.sh_info
    # Symbol 0 is local, so a table's first global is at 1 or later, or it has none (sh_info = count).
    if not 1 <= first <= count:
        raise elf.fail(f"symbol table {elf.symtab.name} has {count} symbols but sh_info {first}, sh_info")
    return first


def with_calls(elf: ElfFile, undefined: Sequence[str], entries: Mapping[int, bytes]) -> bytearray:
    """The object with what calls need: each name of `undefined` added after the last symbol, undefined and
    global, as gas makes a function it calls and does not define (the first gets index len(symbols), so no
    index changes); and for each section index in `entries`, those packed relocation entries added to the
    relocation table that applies to it, or to a new one (`.rela.text`) where it has none. What grows (.symtab,
    .strtab, .symtab_shndx, the tables) grows in copies."""
    grown: dict[int, bytes] = {}
    if undefined:
        symtab = elf.symtab
        strtab = elf.sections[symtab.sh_link]
        names = bytes(elf.section_data(strtab))
        lead = b"" if names.endswith(b"\0") else b"\0"  # a table must end in NUL to be appended to
        count, size = len(elf.symbols), elf.arch.layout.sym.size
        if (count + len(undefined)) >> (8 * elf.arch.word - elf.arch.r_sym_shift):
            raise elf.fail(f"{count + len(undefined)} symbols are more than a relocation of this class can name")
        if symtab.sh_size != count * size:
            raise elf.fail(f"symbol table {symtab.name} is {symtab.sh_size:#x} bytes, not a multiple of {size}")
        added, symbols = bytearray(lead), bytearray()
        for name in undefined:
            st_name = strtab.sh_size + len(added)
            added += name.encode() + b"\0"
            symbols += elf.arch.layout.symbol(st_name, STT_NOTYPE | STB_GLOBAL << 4, SHN_UNDEF, 0, 0)
        grown[symtab.shndx], grown[strtab.shndx] = bytes(symbols), bytes(added)
        for section in elf.sections:
            if section.sh_type == SHT_SYMTAB_SHNDX and section.sh_link == symtab.shndx:
                grown[section.shndx] = bytes(4 * len(undefined))
    new: list[NewSection] = []
    rela = elf.arch.rela
    for shndx, packed_entries in entries.items():
        tables = [
            s
            for s in elf.sections
            if s.sh_type == (SHT_RELA if rela else SHT_REL) and s.sh_info == shndx and s.sh_link == elf.symtab.shndx
        ]
        if tables:
            grown[tables[0].shndx] = packed_entries
            continue
        section = elf.sections[shndx]
        if section.sh_flags & SHF_GROUP:
            raise elf.fail(
                f"section {section.name} is in a section group and has no relocation table to add a call's entry to"
            )
        word = elf.arch.word
        new.append(
            NewSection(
                f"{'.rela' if rela else '.rel'}{section.name}",
                SHT_RELA if rela else SHT_REL,
                SHF_INFO_LINK,
                packed_entries,
                elf.symtab.shndx,
                shndx,
                word,
                word * (3 if rela else 2),
            )
        )
    return append(elf, new, SectionSymbols({}, ()), grown)


def append(
    elf: ElfFile, new: Sequence[NewSection], symbols: SectionSymbols, grown: Mapping[int, bytes] = MappingProxyType({})
) -> bytearray:
    """The file's bytes with these sections appended, the symbols of `symbols.created` made, and each section
    of `grown` (by index) given those bytes after its own, in a copy: an SHT_GROUP gains members so."""
    return _Appender(elf).run(new, symbols.created, grown)


class _Appender:
    def __init__(self, elf: ElfFile) -> None:
        self.elf = elf
        self.layout = layout = elf.arch.layout
        self.word = layout.word
        data = elf.data
        self.e_shoff = layout.ehdr.unpack_from(data, 16)[5]
        self.shdr = layout.shdr
        count = len(elf.sections)
        # Every header, as a mutable list of its fields: those of copied tables change.
        self.headers = [
            list(h) for h in self.shdr.iter_unpack(data[self.e_shoff : self.e_shoff + count * self.shdr.size])
        ]
        self.out = bytearray(data)

    def put(self, blob: bytes, align: int) -> int:
        """Append `blob` at the next multiple of `align`; return its file offset."""
        out = self.out
        out += bytes(-len(out) % max(align, 1))
        offset = len(out)
        out += blob
        if self.word == 4 and len(out) >= 1 << 32:
            raise self.elf.fail(f"the file would grow past 4 GiB, more than {self.layout.name} offsets hold")
        return offset

    def move(self, section: Section, blob: bytes) -> None:
        """Give `section` new contents, as a copy at the end of the file."""
        header = self.headers[section.shndx]
        align = header[_SH_ADDRALIGN]
        # The copy starts at a multiple of sh_addralign, which ELF wants a power of two; the tables
        # copied here have 1, 4 or 8, and a file that says 2**40 must not make ftpatch write that much.
        if align & (align - 1) or align > _MAX_ALIGN:
            raise self.elf.fail(f"section {section.name} [{section.shndx}] has sh_addralign {align:#x}, sh_addralign")
        header[_SH_OFFSET] = self.put(blob, align)
        header[_SH_SIZE] = len(blob)

    def run(self, new: Sequence[NewSection], created: Sequence[int], grown: Mapping[int, bytes]) -> bytearray:
        for index, more in grown.items():
            section = self.elf.sections[index]
            self.move(section, bytes(self.elf.section_data(section)) + more)
        new = list(new)
        if created:
            # A .symtab_shndx made for them comes after the caller's sections, whose indices the caller counted.
            shndx = self._create_symbols(created)
            if shndx is not None:
                new.append(shndx)
        names = self._names([s.name for s in new])
        for made, sh_name in zip(new, names, strict=True):
            offset = self.put(made.data, made.sh_addralign)
            self.headers.append(
                [
                    sh_name,
                    made.sh_type,
                    made.sh_flags,
                    0,
                    offset,
                    len(made.data),
                    made.sh_link,
                    made.sh_info,
                    made.sh_addralign,
                    made.sh_entsize,
                ]
            )
        total = len(self.headers)
        zero = self.headers[0]
        # With SHN_LORESERVE sections or more, the count lives in section 0's sh_size, and so
        # does a name table index that large, in its sh_link (elf.py reads them back the same way).
        zero[_SH_SIZE] = total if total >= SHN_LORESERVE else 0
        shstrndx = self._shstrndx()
        zero[_SH_LINK] = shstrndx if shstrndx >= SHN_LORESERVE else 0
        table = b"".join(self.shdr.pack(*h) for h in self.headers)
        # The only bytes changed in place: the ELF header's e_shoff, e_shnum and (in extended numbering) e_shstrndx.
        e_shoff = self.put(table, self.word)
        self.out[self.layout.e_shoff : self.layout.e_shoff + self.word] = e_shoff.to_bytes(self.word, "little")
        e_shnum = total if total < SHN_LORESERVE else 0
        e_shstrndx = shstrndx if shstrndx < SHN_LORESERVE else SHN_XINDEX
        struct.pack_into("<HH", self.out, self.layout.e_shnum, e_shnum, e_shstrndx)
        return self.out

    def _shstrndx(self) -> int:
        e_shstrndx: int = self.layout.ehdr.unpack_from(self.elf.data, 16)[-1]
        return self.headers[0][_SH_LINK] if e_shstrndx == SHN_XINDEX else e_shstrndx

    def _names(self, names: Sequence[str]) -> list[int]:
        """The sh_name of each new section: an existing string of the name table, or one appended to a copy of it.

        Longer names are added first, so that a name ending another one (__mcount_loc
        in .rela__mcount_loc) shares its bytes, as gas and ld share them.
        """
        shstrtab = self.elf.sections[self._shstrndx()]
        table = bytearray(self.elf.section_data(shstrtab))
        found: dict[str, int] = {}
        for name in sorted(set(names), key=lambda n: (-len(n), n)):
            key = name.encode() + b"\0"
            at = table.find(key)
            if at < 0:
                if table and table[-1] != 0:  # a table must end in NUL to be appended to
                    table += b"\0"
                at = len(table)
                table += key
            found[name] = at
        if len(table) != shstrtab.sh_size:
            self.move(shstrtab, bytes(table))
        return [found[n] for n in names]

    # -- symbols ---------------------------------------------------------------------------

    def _create_symbols(self, created: Sequence[int]) -> NewSection | None:
        """Insert a local section symbol for each section of `created` after the last local, renumber
        every reference to a global, and return the .symtab_shndx to append if one must be made."""
        self._refuse_unrenumberable()
        elf = self.elf
        symtab = elf.symtab
        first = _first_global(elf)
        layout = self.layout
        size, k = layout.sym.size, len(created)
        info = STT_SECTION | STB_LOCAL << 4
        # st_name 0 (a section symbol is named by its section), st_value 0, st_size 0.
        st_shndx = [i if i < SHN_LORESERVE else SHN_XINDEX for i in created]
        entries = [layout.symbol(0, info, shndx, 0, 0) for shndx in st_shndx]
        table = elf.section_data(symtab)
        count = len(elf.symbols)
        self.move(symtab, bytes(table[: first * size]) + b"".join(entries) + bytes(table[first * size : count * size]))
        self.headers[symtab.shndx][_SH_INFO] = first + k
        shndx_words = array.array("I", [i if i >= SHN_LORESERVE else 0 for i in created])
        made = None
        existing = [s for s in elf.sections if s.sh_type == SHT_SYMTAB_SHNDX and s.sh_link == symtab.shndx]
        if existing:
            old = words(elf.section_data(existing[0]), 4)[:count]
            if len(old) < count:
                raise elf.fail(f"section {existing[0].name} has {len(old)} entries, {symtab.name} has {count} symbols")
            self.move(existing[0], packed(old[:first] + shndx_words + old[first:]))
        elif any(created_index >= SHN_LORESERVE for created_index in created):
            column = array.array("I", bytes(4 * first)) + shndx_words + array.array("I", bytes(4 * (count - first)))
            made = NewSection(".symtab_shndx", SHT_SYMTAB_SHNDX, 0, packed(column), symtab.shndx, 0, 4, 4)
        for section in elf.sections:
            if section.sh_link != symtab.shndx:
                continue
            if section.sh_type in (SHT_REL, SHT_RELA):
                copy = self._renumbered_relocations(section, first, k)
                if copy is not None:
                    self.move(section, copy)
            elif section.sh_type == SHT_GROUP:
                # A group's signature symbol is its header's sh_info.
                if first <= section.sh_info < count:
                    self.headers[section.shndx][_SH_INFO] = section.sh_info + k
            elif section.sh_type == SHT_LLVM_ADDRSIG:
                indices = _uleb128s(bytes(elf.section_data(section)), elf, section)
                self.move(section, b"".join(_uleb128(i + k if i >= first else i) for i in indices))
        return made

    def _refuse_unrenumberable(self) -> None:
        """LLVM 12 and earlier named symbols by index inside .llvm.call-graph-profile; later ones use a
        relocation table, which is renumbered like any other."""
        elf = self.elf
        relocated = {s.sh_info for s in elf.sections if s.sh_type in (SHT_REL, SHT_RELA)}
        for section in elf.sections:
            if section.sh_type == SHT_LLVM_CALL_GRAPH_PROFILE and section.shndx not in relocated and section.sh_size:
                raise elf.fail(
                    f"section {section.name} names symbols by index, and a section symbol must be created "
                    "before them: rebuild with a newer clang, or with unwind tables (-fasynchronous-unwind-tables)"
                )

    def _renumbered_relocations(self, section: Section, first: int, k: int) -> bytes | None:
        """A copy of a relocation table whose entries naming a global name its new index; None if none does."""
        elf, word = self.elf, self.word
        columns = 3 if section.sh_type == SHT_RELA else 2
        entsize = columns * word
        if section.sh_entsize != entsize or section.sh_size % entsize:
            raise elf.fail(
                f"relocation section {section.name} has sh_entsize {section.sh_entsize} and size {section.sh_size:#x}, "
                f"expected entries of {entsize} bytes"
            )
        table = words(elf.section_data(section), word)
        r_info = table[1::columns]
        shift = elf.arch.r_sym_shift
        # The symbol is r_info's high bits, so r_info >= first << shift exactly when it names a global.
        threshold, step = first << shift, k << shift
        if not r_info or max(r_info) < threshold:
            return None
        count = len(elf.symbols)
        if max(r_info) >> shift >= count:
            i = next(i for i, info in enumerate(r_info) if info >> shift >= count)
            raise elf.fail(
                f"relocation {section.name}[{i}] names symbol {r_info[i] >> shift}, past the end of the symbol table ({count})"
            )
        if (count + k) >> (8 * word - shift):
            raise elf.fail(f"{count + k} symbols are more than a relocation of this class can name")
        table[1::columns] = array.array(table.typecode, [i + step if i >= threshold else i for i in r_info])
        return packed(table)


def _uleb128s(data: bytes, elf: ElfFile, section: Section) -> list[int]:
    values, value, shift = [], 0, 0
    for byte in data:
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            values.append(value)
            value, shift = 0, 0
    if shift:
        raise elf.fail(f"section {section.name} ends inside a ULEB128 number")
    return values


def _uleb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
