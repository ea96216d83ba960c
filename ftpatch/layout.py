"""Layouts: where the fields of the ELF header, a section header, a symbol and a relocation lie, per ELF class.

An ELF class fixes the size of an address and the order of a symbol's fields;
the machine does not. x32 (`gcc -mx32`) is ELFCLASS32 with the x86-64
instruction set, so the machine's facts (x86.Arch) hold a Layout rather than
repeat it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ELFCLASS32, ELFCLASS64 = 1, 2


@dataclass(frozen=True, eq=False)
class Layout:
    """One ELF class's layout. There are two, compared by identity."""

    elfclass: int  # EI_CLASS
    name: str
    word: int  # bytes in an address, a file offset, r_offset, r_info and r_addend
    ehdr: struct.Struct  # the ELF header after the 16 bytes of e_ident, e_type through e_shstrndx
    shdr: struct.Struct  # a section header
    sym: struct.Struct  # a symbol
    sym_fields: tuple[int, int, int, int, int]  # where st_name, st_info, st_shndx, st_value, st_size are in `sym`
    e_shoff: int  # the file offset of e_shoff in the ELF header
    e_shnum: int  # the file offset of e_shnum, which e_shstrndx follows
    r_sym_shift: int  # r_info >> r_sym_shift is the symbol index; the rest is the type

    @property
    def st_info(self) -> int:
        """The byte offset of st_info in a symbol."""
        return self._offset_of(self.sym_fields[1])

    @property
    def st_shndx(self) -> int:
        """The byte offset of st_shndx in a symbol."""
        return self._offset_of(self.sym_fields[2])

    @property
    def st_value(self) -> int:
        """The byte offset of st_value in a symbol; it is `word` bytes long, as st_size is."""
        return self._offset_of(self.sym_fields[3])

    @property
    def st_size(self) -> int:
        """The byte offset of st_size in a symbol."""
        return self._offset_of(self.sym_fields[4])

    def _offset_of(self, field: int) -> int:
        codes = self.sym.format.lstrip("<")
        return struct.calcsize("<" + codes[:field])

    def symbol(self, st_name: int, st_info: int, st_shndx: int, st_value: int, st_size: int) -> bytes:
        """A symbol's bytes, st_other 0."""
        fields = [0] * 6
        for at, value in zip(self.sym_fields, (st_name, st_info, st_shndx, st_value, st_size), strict=True):
            fields[at] = value
        return self.sym.pack(*fields)


ELF32 = Layout(
    ELFCLASS32,
    "ELFCLASS32",
    4,
    struct.Struct("<HHIIIIIHHHHHH"),
    struct.Struct("<IIIIIIIIII"),
    struct.Struct("<IIIBBH"),  # st_name, st_value, st_size, st_info, st_other, st_shndx
    (0, 3, 5, 1, 2),
    0x20,
    0x30,
    8,
)
ELF64 = Layout(
    ELFCLASS64,
    "ELFCLASS64",
    8,
    struct.Struct("<HHIQQQIHHHHHH"),
    struct.Struct("<IIQQQQIIQQ"),
    struct.Struct("<IBBHQQ"),  # st_name, st_info, st_other, st_shndx, st_value, st_size
    (0, 1, 3, 4, 5),
    0x28,
    0x3C,
    32,
)
LAYOUTS = {layout.elfclass: layout for layout in (ELF32, ELF64)}
