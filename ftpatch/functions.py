"""The function table of a linked file: where its functions start, from .symtab, .dynsym and the unwind tables,
and their names where a symbol gives one. A stripped file keeps .dynsym's exported functions and its unwind
tables, and so most of its starts.
"""

from __future__ import annotations

import bisect

from .elf import ElfFile, SymbolTable
from .unwind import unwind_starts
from .x86 import ENDBR


class Functions:
    """Where the functions of a linked file start, and their names where a symbol gives one."""

    def __init__(self, elf: ElfFile) -> None:
        self.elf = elf
        # Each start's name, as its table and st_name: decoded when asked for (a nop names no function).
        named: dict[int, tuple[SymbolTable, int]] = {}
        local: dict[int, bool] = {}
        sizes: dict[int, int] = {}
        for table in (elf.symbols if elf.has_symtab else None, elf.dynamic_symbols):
            if table is None:
                continue
            functions = table.functions
            for start, size, is_local, st_name in zip(
                functions.st_value, functions.st_size, functions.local, functions.st_name, strict=True
            ):
                if not start or not elf.in_code(start):
                    continue
                sizes[start] = max(sizes.get(start, 0), size)
                # Aliases share an address: a global name over a local one (lib_fib.localalias),
                # and .symtab's over .dynsym's.
                if start not in named or (local[start] and not is_local):
                    named[start], local[start] = (table, st_name), is_local
        unwind = [start for start in unwind_starts(elf) if elf.in_code(start)]
        self.starts = sorted(set(named) | set(unwind))
        self._named = named
        self.sizes = sizes

    def __reduce__(self) -> tuple[type[Functions], tuple[ElfFile]]:
        # Its symbol tables are views of the bytes, which cannot be pickled: a result that crosses processes
        # reads the table again from the file's bytes.
        return Functions, (self.elf,)

    def __bool__(self) -> bool:
        return bool(self.starts)

    def end(self, i: int, span: int | None) -> int | None:
        """Where the i-th function ends, as far as the next start and its symbol's size tell, and at most
        `span` bytes from its start (None: no bound but those)."""
        start = self.starts[i]
        bounds = [start + span] if span is not None else []
        if i + 1 < len(self.starts):
            bounds.append(self.starts[i + 1])
        if self.sizes.get(start):
            bounds.append(start + self.sizes[start])
        return min(bounds) if bounds else None

    def index(self, va: int) -> int:
        """The index of the function whose start is the last at or before `va`; -1 if none."""
        return bisect.bisect_right(self.starts, va) - 1

    def name(self, va: int) -> str | None:
        """The name of the function holding `va`; None past the end its symbol's size gives (code no symbol names)."""
        around = self.containing(va)
        if around is None or 0 < self.sizes.get(around[0], 0) <= va - around[0]:
            return None
        return around[1]

    def containing(self, va: int) -> tuple[int, str | None] | None:
        """(start, name) of the function whose start is the last at or before `va`."""
        i = self.index(va)
        return (self.starts[i], self.name_of(self.starts[i])) if i >= 0 else None

    def name_of(self, start: int) -> str | None:
        """The name of the function that starts at `start`, if a symbol gives one."""
        table, st_name = self._named.get(start, (None, 0))
        return table.name_at(st_name) if table is not None else None

    def entry(self, va: int, listed: bool = False) -> bool | None:
        """Whether `va` is where a function's __fentry__ call sits; None where no function is known.

        `listed`: a site table lists `va`. Past the end of the function before it (by its symbol's size),
        it is in code no symbol names, at the entry of a function without one: Debian's vmlinux has 615 such
        sites, and no unwind tables to say where those functions start.
        """
        i = self.index(va)  # not containing(va): no name is decoded to say where a site is
        if i < 0:
            return None
        start = self.starts[i]
        if va == start or (va == start + 4 and self.elf.read(start, 4) in ENDBR):
            return True
        return listed and 0 < self.sizes.get(start, 0) <= va - start
