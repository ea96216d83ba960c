"""The ELF model: check an x86 ELF file's bytes and answer every question ftpatch asks of them (read.py reads the file).

ElfFile is the one model of a file. What is hot (the section headers, symbol
tables and relocation tables, which an object or a program can hold by the
hundred thousand) is decoded here as whole columns and bounds-checked field by
field, so that an error can say which field is wrong. What is not hot (the
.eh_frame of a stripped static program, the names of machines and relocation
types) is read through pyelftools, over the same bytes, in one adapter that turns
what a malformed file makes it raise into an InputError.

lief loaded the symbols at first and was dropped from this path, measured: it
reads a malformed header without complaint (uninitialised memory in its header
dump), it reads no symbols at all with extended section numbering (e_shnum 0),
and on Debian's 4,023 kernel modules it made each file 1.5 times slower than
decoding .symtab here, with 0.3 s and 65 MB to import it.
"""

from __future__ import annotations

import array
import bisect
import contextlib
import struct
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from itertools import accumulate, chain, compress, groupby, repeat
from operator import itemgetter
from typing import NamedTuple

from .errors import InputError
from .layout import LAYOUTS, Layout
from .x86 import ARCHES, Arch

ELFDATA2LSB = 1
ET_REL, ET_EXEC, ET_DYN = 1, 2, 3
SHT_NULL, SHT_PROGBITS, SHT_SYMTAB, SHT_RELA, SHT_DYNAMIC, SHT_NOBITS, SHT_REL, SHT_DYNSYM = 0, 1, 2, 4, 6, 8, 9, 11
SHT_GROUP, SHT_SYMTAB_SHNDX = 17, 18
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4
SHF_INFO_LINK, SHF_GROUP = 0x40, 0x200
SHN_UNDEF, SHN_LORESERVE, SHN_XINDEX = 0, 0xFF00, 0xFFFF
STT_NOTYPE, STT_FUNC, STT_SECTION, STT_GNU_IFUNC = 0, 2, 3, 10
_IS_FUNCTION = bytes(int(info & 0xF == STT_FUNC) for info in range(256))  # st_info -> 1 for an STT_FUNC symbol
STB_LOCAL, STB_GLOBAL = 0, 1
DT_NULL, DT_PLTGOT = 0, 3

E_TYPE_NAMES = {ET_REL: "ET_REL", ET_EXEC: "ET_EXEC", ET_DYN: "ET_DYN"}
SUPPORTED_TYPES = (ET_REL, ET_EXEC, ET_DYN)


class Section(NamedTuple):
    """One section header. Sections and symbols are named tuples, not dataclasses:
    an object built with -ffunction-sections has tens of thousands of each, and a
    frozen dataclass costs four times as much to make."""

    shndx: int  # its index in the section header table
    name: str
    sh_type: int
    sh_flags: int
    sh_addr: int
    sh_offset: int
    sh_size: int
    sh_link: int
    sh_info: int
    sh_entsize: int

    @property
    def is_exec(self) -> bool:
        return bool(self.sh_flags & SHF_EXECINSTR)

    @property
    def is_code(self) -> bool:
        """Loaded instructions with bytes in the file: where a linked file's sites can be."""
        return bool(self.sh_flags & SHF_EXECINSTR and self.sh_flags & SHF_ALLOC) and self.sh_type != SHT_NOBITS

    def where(self, offset: int) -> str:
        return f"{self.name}+{offset:#x}"


class Symbol(NamedTuple):
    symndx: int  # its index in the symbol table
    name: str
    st_value: int
    st_size: int
    st_type: int
    st_shndx: int


class _Row(NamedTuple):
    st_name: int
    st_type: int
    st_shndx: int
    st_value: int
    st_size: int


class SymbolTable:
    """The symbols of one .symtab or .dynsym, decoded a column at a time: finding the
    target symbols needs only st_name, and decoding every name costs more than the rest
    of a scan, so a Symbol, name included, is only built for the index asked for."""

    def __init__(self, table: memoryview, layout: Layout, strtab: bytes, extended: Callable[[int], list[int]]) -> None:
        self._layout = layout
        self._size = size = layout.sym.size
        self._table = table[: len(table) - len(table) % size]
        self._strtab = strtab
        self._function_names: dict[int, str] = {}  # symbol index -> name, of the functions function_names named
        # A symbol whose st_shndx is SHN_XINDEX has its section index in SHT_SYMTAB_SHNDX.
        # Read (and checked) now, so that a bad file fails here and not when a name is asked for.
        self._st_shndxs = words(self._table, 2)[layout.st_shndx // 2 :: size // 2]  # kept: _st_shndx reads it
        self._extended = extended(len(self)) if SHN_XINDEX in self._st_shndxs else None

    def __len__(self) -> int:
        return len(self._table) // self._size

    def __getitem__(self, index: int) -> Symbol:
        row = self._row(index)
        return Symbol(index, self.name_at(row.st_name), row.st_value, row.st_size, row.st_type, row.st_shndx)

    def __iter__(self) -> Iterator[Symbol]:
        return (self[i] for i in range(len(self)))

    def place(self, index: int) -> tuple[int, int]:
        """(st_shndx, st_value) of a symbol, without decoding its name."""
        row = self._row(index)
        return row.st_shndx, row.st_value

    def _row(self, index: int) -> _Row:
        """One symbol's fields but its name: from every row if they were decoded, else from its entry alone
        (`call --target` asks of one symbol in a table of thousands)."""
        if "_rows" in self.__dict__ or self._extended is not None or not 0 <= index < len(self):
            return self._rows[index]
        n, info, shndx, value, size = itemgetter(*self._layout.sym_fields)(
            self._layout.sym.unpack_from(self._table, index * self._size)
        )
        return _Row(n, info & 0xF, shndx, value, size)

    @cached_property
    def _rows(self) -> list[_Row]:
        """Every symbol's fields but its name."""
        fields = itemgetter(*self._layout.sym_fields)
        raw = map(fields, self._layout.sym.iter_unpack(self._table))
        rows = [_Row(n, info & 0xF, shndx, value, size) for n, info, shndx, value, size in raw]
        if (extended := self._extended) is not None:
            rows = [r._replace(st_shndx=extended[i]) if r.st_shndx == SHN_XINDEX else r for i, r in enumerate(rows)]
        return rows

    def name_at(self, st_name: int) -> str:
        end = self._strtab.find(b"\0", st_name)
        return self._strtab[st_name:end].decode("utf-8", "backslashreplace") if end >= 0 else ""

    def named(self, names: Iterable[str]) -> dict[int, str]:
        """Index -> name of every symbol (index 0 excepted) whose name is one of `names`."""
        strtab, offsets = self._strtab, {}
        for name in names:
            key = name.encode() + b"\0"
            at = strtab.find(key)
            while at >= 0:  # a name may also end a longer string that the linker shared
                offsets[at] = name
                at = strtab.find(key, at + 1)
        if not offsets:  # `call --target NAME` asks first of a name no string of the object holds
            return {}
        st_names = self._st_names
        used = offsets.keys() & set(st_names)  # a short name ends many strings; few of them are symbols
        found = {}
        for st_name, name in ((o, offsets[o]) for o in used):
            i = 0  # symbol 0 is never a target
            with contextlib.suppress(ValueError):  # list.index searches in C; a comprehension would not
                while True:
                    i = st_names.index(st_name, i + 1)
                    found[i] = name
        return dict(sorted(found.items()))

    @cached_property
    def _st_names(self) -> list[int]:
        """st_name of every symbol, the first word of an entry in both classes: read once, for the scan's targets
        and then for each group `call --target` points at its function."""
        return words(self._table, 4)[:: self._size // 4].tolist()

    def versioned(self, names: Iterable[str]) -> list[str]:
        """Each `name@VERSION` in the string table for these names: bfd names an undefined symbol of a
        dynamic program so in .symtab (`mcount@GLIBC_2.2.5`), where .dynsym has the version apart."""
        found = []
        for name in names:
            key = b"\0" + name.encode() + b"@"
            at = self._strtab.find(key)
            while at >= 0:
                end = self._strtab.find(b"\0", at + 1)
                found.append(self._strtab[at + 1 : end].decode("utf-8", "backslashreplace"))
                at = self._strtab.find(key, end)
        return found

    def section_symbols(self, below: int) -> dict[int, int]:
        """Section index -> its first local STT_SECTION symbol among symbols 1 to `below` - 1.

        Read from the st_info column alone, as `named` reads st_name: an object has
        a few section symbols among thousands of others.
        """
        layout, size = self._layout, self._size
        infos = bytes(self._table[layout.st_info :: size])  # st_info of each symbol
        local_section = STT_SECTION | STB_LOCAL << 4
        found: dict[int, int] = {}
        i = infos.find(local_section, 1, below)
        while i >= 0:
            found.setdefault(self._st_shndx(i), i)
            i = infos.find(local_section, i + 1, below)
        return found

    def _st_shndx(self, index: int) -> int:
        """A symbol's section index, through SHT_SYMTAB_SHNDX where its st_shndx is SHN_XINDEX."""
        st_shndx = self._st_shndxs[index]
        return self._extended[index] if st_shndx == SHN_XINDEX and self._extended is not None else st_shndx

    @cached_property
    def functions(self) -> FunctionSymbols:
        """Every defined STT_FUNC symbol, a column a field, in symbol order.

        Read a column at a time, as `named` reads st_name: an object or a program has its
        functions by the thousand, and a scan names the function of each of its sites."""
        layout, size, table = self._layout, self._size, self._table
        infos = bytes(table[layout.st_info :: size])
        word = words(table, layout.word)
        values = word[layout.st_value // layout.word :: size // layout.word]
        sizes = word[layout.st_size // layout.word :: size // layout.word]
        st_names, st_shndx = self._st_names, self._st_shndx
        found = FunctionSymbols([], [], [], [], [], [])
        for i in compress(range(len(infos)), infos.translate(_IS_FUNCTION)):
            if (shndx := st_shndx(i)) != SHN_UNDEF:
                found.symbol.append(i)
                found.st_shndx.append(shndx)
                found.st_value.append(values[i])
                found.st_size.append(sizes[i])
                found.local.append(infos[i] >> 4 == STB_LOCAL)
                found.st_name.append(st_names[i])
        return found

    @cached_property
    def _functions(self) -> dict[int, _Extents]:
        """Per section index: the extents of its STT_FUNC symbols, sorted by (st_value, st_size, index)."""
        functions = self.functions
        by_section: dict[int, list[tuple[int, int, int]]] = {}
        for i, shndx, value, size in zip(
            functions.symbol, functions.st_shndx, functions.st_value, functions.st_size, strict=True
        ):
            by_section.setdefault(shndx, []).append((value, size, i))
        extents = {}
        for shndx, funcs in by_section.items():
            funcs.sort()
            extents[shndx] = _Extents(
                [value for value, _, _ in funcs],
                [0, *(value + max(size, 1) for value, size, _ in funcs)],  # a function of size 0 holds its start
                [0, *(i for _, _, i in funcs)],
            )
        return extents

    def function_starts(self, shndx: int) -> list[int]:
        """The st_value of each STT_FUNC symbol of section `shndx`, sorted."""
        extents = self._functions.get(shndx)
        return extents.starts if extents is not None else []

    def function_at(self, shndx: int, offset: int) -> Symbol | None:
        """The STT_FUNC symbol of section `shndx` whose extent holds `offset`, if any."""
        extents, (at,) = self._holding(shndx, (offset,))
        return self[extents.indices[at]] if at else None

    def function_names(self, shndx: int, offsets: Sequence[int]) -> list[str | None]:
        """The name of function_at's symbol at each of these offsets of a section, each name decoded once:
        a scan names the function of every site, by the thousand, a column at a time."""
        extents, held = self._holding(shndx, offsets)
        indices, names, st_names = extents.indices, self._function_names, self._st_names
        for index in {indices[at] for at in held if at} - names.keys():
            names[index] = self.name_at(st_names[index])
        return [names[indices[at]] if at else None for at in held]

    def _holding(self, shndx: int, offsets: Sequence[int]) -> tuple[_Extents, list[int]]:
        """The functions of section `shndx`, and the place among them of the one that holds each offset: the last
        to start at or before it, if its extent reaches it; 0 where none does."""
        extents = self._functions.get(shndx, _NO_EXTENTS)
        ends = extents.ends
        places = map(partial(bisect.bisect_right, extents.starts), offsets)
        return extents, [at if offset < ends[at] else 0 for at, offset in zip(places, offsets, strict=True)]


class FunctionSymbols(NamedTuple):
    """The defined STT_FUNC symbols of a table, a column a field, in symbol order."""

    symbol: list[int]  # each one's index in the table
    st_shndx: list[int]  # SHN_XINDEX resolved
    st_value: list[int]
    st_size: list[int]
    local: list[bool]  # st_bind is STB_LOCAL
    st_name: list[int]


class _Extents(NamedTuple):
    """The STT_FUNC symbols of one section, sorted, for a bisect of an offset: bisect_right(starts, offset) is
    the place in `ends` and `indices` of the last function that starts at or before it (0: none does)."""

    starts: list[int]  # st_value of each
    ends: list[int]  # 0, then where each ends
    indices: list[int]  # 0, then each one's symbol index


_NO_EXTENTS = _Extents([], [0], [0])  # a section with no function: every offset's place is 0


@dataclass(frozen=True)
class Relocations:
    """The entries of some relocation tables, in table order, as columns.

    All the tables asked for are read as one: gcc -ffunction-sections gives an
    object one table a function, and a pass per table would cost more than the
    rest of the scan. An entry is named by its position in these columns;
    `table` and index() say where it lives.
    """

    tables: tuple[tuple[Section, Section | None], ...]  # (relocation section, the section it applies to)
    # Arrays, not lists: an object linked with ld -r can have millions of entries, and a
    # list of ints costs 36 bytes an entry where an array costs 8.
    table: array.array[int]  # each entry's table, an index into `tables`
    first: list[int]  # the position of each table's first entry: entry i is [i - first[table[i]]] of its table
    r_offset: array.array[int]
    r_info: array.array[int]
    r_addend: array.array[int]  # 0 for an entry of a REL table, whose addend is in the bytes relocated
    r_sym_shift: int  # r_info >> r_sym_shift is the symbol (Arch.r_sym_shift)

    def index(self, i: int) -> int:
        """Entry i's index in its own table."""
        return i - self.first[self.table[i]]

    def name(self, i: int) -> str:
        return f"{self.tables[self.table[i]][0].name}[{self.index(i)}]"

    def section(self, i: int) -> Section:
        applies_to = self.tables[self.table[i]][1]
        assert applies_to is not None  # only asked of tables that apply to a section
        return applies_to

    def rela(self, i: int) -> bool:
        return self.tables[self.table[i]][0].sh_type == SHT_RELA

    def addend(self, i: int) -> int | None:
        """Entry i's r_addend; None on REL."""
        return self.r_addend[i] if self.rela(i) else None

    @cached_property
    def values(self) -> dict[int, None]:
        """Each r_info value once, in table order."""
        return dict.fromkeys(self.r_info)

    def holding(self, r_info: int) -> list[int]:
        """Every entry whose r_info is `r_info`."""
        return _words_holding(self._r_info_bytes, r_info.to_bytes(self.r_info.itemsize, "little"), 0)

    def against(self, symbols: Iterable[int]) -> dict[int, list[int]]:
        """r_info -> every entry naming one of `symbols`, the values in table order of their first entry.

        Each symbol is searched for in C, as the bytes r_info holds it in: a kernel module has tens of thousands
        of entries and a target's few hundred, and a pass over every value in Python (`values`, then `holding` of
        each) cost as much as the rest of its scan."""
        size, shift = self.r_info.itemsize, self.r_sym_shift
        found: dict[int, list[int]] = {}
        r_info = self.r_info
        for symbol in symbols:
            # The symbol is r_info's high bytes: those above the type's `shift` bits.
            needle = symbol.to_bytes(size - shift // 8, "little")
            for i in _words_holding(self._r_info_bytes, needle, shift // 8):
                found.setdefault(r_info[i], []).append(i)
        return dict(sorted(found.items(), key=lambda item: item[1][0]))

    @cached_property
    def _r_info_bytes(self) -> bytes:
        return packed(self.r_info)


def _words_holding(raw: bytes, needle: bytes, at: int) -> list[int]:
    """The index of every word of `raw` whose bytes from `at` on are `needle`, its words being `at` +
    len(needle) bytes long; found by bytes.find, which skips to the next word past a match that straddles two."""
    size = len(needle) + at
    found = []
    start = raw.find(needle, at)
    while start >= 0:
        misaligned = (start - at) % size
        if misaligned:
            start = raw.find(needle, start + size - misaligned)
        else:
            found.append(start // size)
            start = raw.find(needle, start + size)
    return found


def words(view: memoryview | bytes, size: int, signed: bool = False) -> array.array[int]:
    """`view` as little-endian words of `size` bytes (2, 4 or 8), whatever the host's byte order.

    Relocation and symbol tables are read a column at a time through these: a
    Python loop over every entry of a large object costs more than the rest of a scan.
    """
    code = {4: "i", 8: "q"}[size] if signed else {2: "H", 4: "I", 8: "Q"}[size]
    column = array.array(code)
    column.frombytes(view[: len(view) - len(view) % size])
    if sys.byteorder != "little":
        column.byteswap()
    return column


def packed(column: array.array[int]) -> bytes:
    """A column of words as little-endian bytes, whatever the host's byte order: words() undone."""
    if sys.byteorder != "little":
        column = array.array(column.typecode, column)
        column.byteswap()
    return column.tobytes()


def machine_name(e_machine: int) -> str:
    from elftools.elf.enums import ENUM_E_MACHINE

    names = {v: k for k, v in ENUM_E_MACHINE.items() if isinstance(v, int)}
    return f"{names.get(e_machine, 'EM_?')} ({e_machine})"


class Headers(NamedTuple):
    """What checking a file's ELF header and section header table found."""

    e_type: int
    arch: Arch
    sections: tuple[Section, ...]
    read_from: tuple[tuple[int, int], ...]  # (start, end) of the bytes these were read from


class ElfFile:
    """A checked x86 ELF file held in memory, with its section headers decoded.

    It knows its bytes, not their file's name: an archive member and a file's
    new bytes are read alike, and what opened the file names its errors
    (errors.naming).
    """

    def __init__(self, data: bytes, headers: Headers | None = None) -> None:
        """`headers`: another ElfFile's, read from bytes that `data` holds unchanged (reread)."""
        self.data = bytes(data)  # the same object when it is bytes already; sites are its slices
        self._last_section: Section | None = None  # the section section_at found last
        self._headers = headers or self._check_container()
        self.e_type, self.arch, self.sections = self._headers.e_type, self._headers.arch, self._headers.sections

    def reread(self, data: bytes) -> ElfFile:
        """`data`, this file's bytes patched elsewhere (a plan patches sites and relocation entries), as an
        ElfFile: its sections are this file's if the bytes they were read from are the same, as reading them
        again would give the same; otherwise they are read again. The proof of every plan reads its new bytes
        so, and reading the section headers was a third of what it cost on a kernel module."""
        same = len(data) == len(self.data) and all(data[a:b] == self.data[a:b] for a, b in self._headers.read_from)
        return ElfFile(data, self._headers if same else None)

    def __reduce__(self) -> tuple[type[ElfFile], tuple[bytes]]:
        # Its views of the bytes cannot be pickled; they are made again from the bytes.
        return ElfFile, (self.data,)

    @property
    def type_name(self) -> str:
        return E_TYPE_NAMES[self.e_type]

    @staticmethod
    def fail(detail: str) -> InputError:
        return InputError("", detail)

    def section_data(self, section: Section) -> memoryview:
        if section.sh_type == SHT_NOBITS:
            raise self.fail(f"section {section.name} [{section.shndx}] has no file bytes (SHT_NOBITS)")
        return memoryview(self.data)[section.sh_offset : section.sh_offset + section.sh_size]

    def section_named(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    def _check_container(self) -> Headers:
        data = self.data
        if len(data) == 0:
            raise self.fail("empty file")
        if data[:4] != b"\x7fELF":
            if data.startswith(b"!<arch>\n"):
                raise self.fail("a static archive, not an ELF file: read it with scan_path, at offset 0")
            if data[:4] in (b"BC\xc0\xde", b"\xde\xc0\x17\x0b"):  # LLVM bitcode, bare or in its wrapper
                raise self.fail("an LLVM bitcode (clang -flto) object, not machine code: patch the linked program")
            raise self.fail("not an ELF file, no ELF magic at offset 0")
        if len(data) < 16:
            raise self.fail(f"truncated ELF header, file is {len(data)} bytes")
        elfclass, ei_data = data[4], data[5]
        layout = LAYOUTS.get(elfclass)
        if layout is None:
            raise self.fail(f"invalid EI_CLASS {elfclass}, e_ident[4]")
        if ei_data != ELFDATA2LSB:
            raise self.fail(f"not little-endian (EI_DATA {ei_data}, x86 ELF is ELFDATA2LSB), e_ident[5]")
        ehdr = layout.ehdr
        if len(data) < 16 + ehdr.size:
            raise self.fail(f"truncated ELF header, file is {len(data)} bytes")
        (
            e_type,
            e_machine,
            _version,
            _entry,
            _phoff,
            e_shoff,
            _flags,
            _ehsize,
            _phentsize,
            _phnum,
            e_shentsize,
            e_shnum,
            e_shstrndx,
        ) = ehdr.unpack_from(data, 16)
        arch = ARCHES.get((e_machine, elfclass))
        if arch is None:
            if all(machine != e_machine for machine, _ in ARCHES):
                raise self.fail(f"unsupported machine {machine_name(e_machine)}, e_machine")
            raise self.fail(f"{layout.name} with machine {machine_name(e_machine)} is not supported, e_ident[4]")
        if e_type not in SUPPORTED_TYPES:
            raise self.fail(f"unsupported ELF type {E_TYPE_NAMES.get(e_type, e_type)}, e_type")
        sections, read_from = self._read_sections(layout, e_shoff, e_shentsize, e_shnum, e_shstrndx)
        return Headers(e_type, arch, sections, read_from)

    def _read_sections(
        self, layout: Layout, e_shoff: int, e_shentsize: int, e_shnum: int, e_shstrndx: int
    ) -> tuple[tuple[Section, ...], tuple[tuple[int, int], ...]]:
        """The sections, and (start, end) of the bytes they were read from: the ELF header, the section header
        table and the section name table."""
        data, shdr = self.data, layout.shdr
        if e_shoff == 0:
            raise self.fail("no section header table, e_shoff is 0")
        if e_shentsize != shdr.size:
            raise self.fail(f"e_shentsize is {e_shentsize}, expected {shdr.size}")
        if e_shoff + shdr.size > len(data):
            raise self.fail(
                f"section header table at {e_shoff:#x} is past the end of the file ({len(data):#x} bytes), e_shoff"
            )
        # With 65,280 sections or more, the real count and string table index live in section 0.
        zero = shdr.unpack_from(data, e_shoff)
        shnum = e_shnum or zero[5]
        shstrndx = zero[6] if e_shstrndx == SHN_XINDEX else e_shstrndx
        if e_shoff + shnum * shdr.size > len(data):
            raise self.fail(
                f"section header table ({shnum} entries at {e_shoff:#x}) is truncated, file is {len(data):#x} bytes, e_shnum"
            )
        raw = list(shdr.iter_unpack(memoryview(data)[e_shoff : e_shoff + shnum * shdr.size]))
        if not 0 < shstrndx < shnum:
            raise self.fail(f"section name table index {shstrndx} is out of range ({shnum} sections), e_shstrndx")
        for i, header in enumerate(raw):
            sh_type, sh_offset, sh_size = header[1], header[4], header[5]
            if sh_offset + sh_size > len(data) and sh_type not in (SHT_NOBITS, SHT_NULL):
                raise self.fail(
                    f"section [{i}] (offset {sh_offset:#x}, size {sh_size:#x}) extends past the end of the file ({len(data):#x} bytes), sh_size"
                )
        _, _, _, _, str_off, str_size, *_ = raw[shstrndx]
        strtab = data[str_off : str_off + str_size]
        read_from = (
            (0, 16 + layout.ehdr.size),
            (e_shoff, e_shoff + shnum * shdr.size),
            (str_off, str_off + str_size),
        )
        sections = []
        for i, (sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info, _, sh_entsize) in enumerate(
            raw
        ):
            end = strtab.find(b"\0", sh_name)
            if end < 0:
                raise self.fail(f"section [{i}] name offset {sh_name:#x} is outside the section name table")
            name = strtab[sh_name:end].decode("utf-8", "backslashreplace")
            sections.append(
                Section(i, name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info, sh_entsize)
            )
        return tuple(sections), read_from

    # -- symbols -----------------------------------------------------------------------

    def _one(self, sh_type: int) -> Section | None:
        found = [s for s in self.sections if s.sh_type == sh_type]
        if len(found) > 1:
            kind = "SHT_SYMTAB" if sh_type == SHT_SYMTAB else "SHT_DYNSYM"
            raise self.fail(f"expected one {kind} section, found {len(found)}")
        return found[0] if found else None

    @cached_property
    def symtab(self) -> Section:
        found = self._one(SHT_SYMTAB)
        if found is None:
            raise self.fail("expected one SHT_SYMTAB section, found 0")
        return found

    @property
    def has_symtab(self) -> bool:
        return self._one(SHT_SYMTAB) is not None

    @cached_property
    def symbols(self) -> SymbolTable:
        """The .symtab, decoded in bulk, with SHN_XINDEX resolved through .symtab_shndx."""
        return self._symbol_table(self.symtab)

    @cached_property
    def dynamic_symbols(self) -> SymbolTable | None:
        """The .dynsym of a linked file, if it has one."""
        dynsym = self._one(SHT_DYNSYM)
        return self._symbol_table(dynsym) if dynsym is not None else None

    def _symbol_table(self, table: Section) -> SymbolTable:
        if not 0 < table.sh_link < len(self.sections):
            raise self.fail(
                f"symbol table {table.name} links to section [{table.sh_link}], which does not exist, sh_link"
            )
        strtab = bytes(self.section_data(self.sections[table.sh_link]))
        return SymbolTable(self.section_data(table), self.arch.layout, strtab, self._symtab_shndx(table))

    def _symtab_shndx(self, table: Section) -> Callable[[int], list[int]]:
        def extended(count: int) -> list[int]:
            """The SHT_SYMTAB_SHNDX words for `table`: the real section index of each symbol."""
            found = [s for s in self.sections if s.sh_type == SHT_SYMTAB_SHNDX and s.sh_link == table.shndx]
            if len(found) != 1:
                raise self.fail(
                    f"a symbol has st_shndx SHN_XINDEX but there are {len(found)} SHT_SYMTAB_SHNDX sections for {table.name}"
                )
            words_ = self.section_data(found[0])
            if len(words_) < 4 * count:
                raise self.fail(
                    f"section {found[0].name} has {len(words_) // 4} entries, {table.name} has {count} symbols"
                )
            return list(struct.unpack_from(f"<{count}I", words_))

        return extended

    # -- relocations -------------------------------------------------------------------

    def relocations(self, tables: Sequence[tuple[Section, Section | None]], nsyms: int) -> Relocations:
        """The entries of these REL/RELA tables as columns, each table's layout and every symbol index
        checked against `nsyms`, the length of the symbol table they link to."""
        arch = self.arch
        word = arch.word
        unsigned_code = "Q" if word == 8 else "I"
        r_offset, r_info = array.array(unsigned_code), array.array(unsigned_code)
        r_addend = array.array("q" if word == 8 else "i")
        counts = []
        for rel, _ in tables:
            entsize = word * (3 if rel.sh_type == SHT_RELA else 2)
            if rel.sh_entsize != entsize:
                raise self.fail(f"relocation section {rel.name} has sh_entsize {rel.sh_entsize}, expected {entsize}")
            if rel.sh_size % entsize:
                raise self.fail(f"relocation section {rel.name} size {rel.sh_size:#x} is not a multiple of {entsize}")
            counts.append(rel.sh_size // entsize)
        # Tables of one kind in a row are decoded at once.
        for rela, run in groupby(tables, key=lambda t: t[0].sh_type == SHT_RELA):
            raw = b"".join(self.section_data(rel) for rel, _ in run)
            columns = 3 if rela else 2
            unsigned = words(raw, word)
            r_offset += unsigned[0::columns]
            r_info += unsigned[1::columns]
            r_addend += (
                words(raw, word, signed=True)[2::3]
                if rela
                else array.array(r_addend.typecode, [0]) * (len(unsigned) // 2)
            )
        table = array.array("I", chain.from_iterable(repeat(t, n) for t, n in enumerate(counts)))
        first = [0, *accumulate(counts)][:-1]
        entries = Relocations(tuple(tables), table, first, r_offset, r_info, r_addend, arch.r_sym_shift)
        shift = arch.r_sym_shift
        if r_info and max(r_info) >> shift >= nsyms:
            i = next(i for i, info in enumerate(r_info) if info >> shift >= nsyms)
            raise self.fail(
                f"relocation {entries.name(i)} names symbol {r_info[i] >> shift}, past the end of the symbol table ({nsyms})"
            )
        return entries

    def applied_to(self, rel: Section) -> Section:
        """The section a relocation table applies to (its sh_info)."""
        if not 0 < rel.sh_info < len(self.sections):
            raise self.fail(
                f"relocation section {rel.name} applies to section [{rel.sh_info}], which does not exist, sh_info"
            )
        return self.sections[rel.sh_info]

    # -- a linked file's image ---------------------------------------------------------

    @cached_property
    def code_sections(self) -> tuple[Section, ...]:
        """The loaded executable sections, by address."""
        return tuple(sorted((s for s in self.sections if s.is_code), key=lambda s: s.sh_addr))

    def section_at(self, va: int) -> Section | None:
        """The loaded section (with file bytes) that holds address `va`."""
        last = self._last_section
        if last is not None and last.sh_addr <= va < last.sh_addr + last.sh_size:
            return last  # scanners ask about one section many times in a row: .text, mostly
        starts, loaded = self._loaded
        i = bisect.bisect_right(starts, va) - 1
        if i >= 0 and va < loaded[i].sh_addr + loaded[i].sh_size:
            self._last_section = loaded[i]
            return loaded[i]
        return None

    @cached_property
    def _loaded(self) -> tuple[list[int], list[Section]]:
        """The loaded sections with file bytes and a size, by address, and their addresses."""
        loaded = sorted(
            (
                s
                for s in self.sections
                if s.sh_flags & SHF_ALLOC and s.sh_type not in (SHT_NOBITS, SHT_NULL) and s.sh_size
            ),
            key=lambda s: s.sh_addr,
        )
        return [s.sh_addr for s in loaded], loaded

    def in_code(self, va: int) -> bool:
        """Whether `va` is in a loaded executable section with file bytes."""
        sec = self.section_at(va)
        return sec is not None and sec.is_code

    def read(self, va: int, length: int) -> bytes:
        """Up to `length` bytes of the loaded image at `va`, within one section; b"" where nothing is loaded."""
        sec = self.section_at(va)
        return self.read_in(sec, va - sec.sh_addr, length) if sec is not None else b""

    def read_in(self, sec: Section, offset: int, length: int) -> bytes:
        """Up to `length` bytes of section `sec` from `offset` in it: read's bytes where the section is known."""
        return self.data[sec.sh_offset + offset : sec.sh_offset + min(offset + length, sec.sh_size)]

    @cached_property
    def _dynamic(self) -> list[tuple[int, int]]:
        """(d_tag, d_val) of each entry of .dynamic before DT_NULL; none in a static program."""
        dynamic = next((s for s in self.sections if s.sh_type == SHT_DYNAMIC), None)
        if dynamic is None:
            return []
        column = words(self.section_data(dynamic), self.arch.word)
        entries = list(zip(column[0::2], column[1::2], strict=False))
        return entries[: next((i for i, (d_tag, _) in enumerate(entries) if d_tag == DT_NULL), len(entries))]

    def dynamic_entry(self, tag: int) -> int | None:
        """The value of a DT_* tag in .dynamic, if the file has one."""
        return next((d_val for d_tag, d_val in self._dynamic if d_tag == tag), None)
