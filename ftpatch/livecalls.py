"""The byte search: every live call to a profiling target in a linked file's code, found by its encoding alone.

This is the check that no profiling call is left. The scanner decodes
function by function from where functions start; this looks at every byte of
the code instead, so a call that the decoding did not reach is still seen.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from .targets import Targets
from .x86 import hexbytes

_WINDOW_BYTES = 1 << 16
# call *disp32(%reg): %eax, %ecx, %edx, %ebx, %ebp, %esi, %edi (%esp would need a SIB byte).
_GOT_BASE_MODRMS = (0x93, 0x90, 0x91, 0x92, 0x95, 0x96, 0x97)


@dataclass(frozen=True)
class LiveCalls:
    """Every live call to a target in some bytes of this file's layout, found by its encoding alone:
    file offset of the call's end (its return address) -> what it is.

    A relative call's displacement depends on where it sits, but over 64 KiB of
    code its top two bytes take at most two values, so each window is searched
    for them in C and only the few matches are computed here: testing every e8
    byte in Python cost as much as the whole walk (sqlite3 -O0: 0.14 s).
    """

    targets: Targets
    code: tuple[tuple[int, int, int], ...]  # (sh_addr, sh_offset, sh_size) of each code section

    def __call__(self, data: bytes | bytearray) -> dict[int, str]:
        found: dict[int, str] = {}
        for sh_addr, sh_offset, sh_size in self.code:
            code = bytes(data[sh_offset : sh_offset + sh_size])
            for at, length, target in self._calls(code, sh_addr):
                found[sh_offset + at + length] = f"{hexbytes(code[at : at + length])} at {sh_addr + at:#x}, to {target}"
        return found

    def _calls(self, code: bytes, sh_addr: int) -> Iterator[tuple[int, int, str]]:
        """(offset, length, target) of each call to a target in `code`, which is loaded at `sh_addr`."""
        targets, x86_64 = self.targets, self.targets.arch.x86_64
        # Relative: e8 (e9, a tail jmp) to a PLT entry or a definition (67 e8 holds one), x86-64 ff 15 (ff 25)
        # to a GOT slot.
        relative = [(op, 5, dest, t.name) for dest, t in targets.rel32.items() for op in (b"\xe8", b"\xe9")]
        if x86_64:
            relative += [(op, 6, slot, t.name) for slot, t in targets.slot.items() for op in (b"\xff\x15", b"\xff\x25")]
        for opcode, length, dest, name in relative:
            for window in range(0, len(code), _WINDOW_BYTES):
                # disp = dest - (sh_addr + at + length) for `at` in this window: its top two bytes.
                high = {((dest - sh_addr - at - length) >> 16) & 0xFFFF for at in (window, window + _WINDOW_BYTES - 1)}
                tops = b"|".join(re.escape(h.to_bytes(2, "little")) for h in sorted(high))
                pattern = re.compile(re.escape(opcode) + b"..(?:" + tops + b")", re.DOTALL)
                end = min(window + _WINDOW_BYTES, len(code))
                at = window
                while (m := pattern.search(code, at, end + length - 1)) is not None and m.start() < end:
                    at = m.start()
                    disp = int.from_bytes(code[at + length - 4 : at + length], "little", signed=True)
                    if sh_addr + at + length + disp == dest:
                        yield at, length, name
                    at += 1
        # Absolute: i386 ff 93 disp(%ebx) and ff 15 abs32, x86-64 ff 14 25 abs32: the same bytes wherever they are.
        absolute = [(b"\xff\x14\x25" if x86_64 else b"\xff\x15", slot, t.name) for slot, t in targets.slot.items()]
        if not x86_64 and targets.got_base is not None:
            # ff 93 through %ebx, and gcc -m32 -fno-plt's ff 97 (ff 96, ...) through another register that holds
            # the GOT base: no site ftpatch patches, but a live call all the same.
            absolute += [
                (bytes((0xFF, modrm)), slot - targets.got_base, t.name)
                for slot, t in targets.slot.items()
                for modrm in _GOT_BASE_MODRMS
            ]
        for opcode, value, name in absolute:
            needle = opcode + (value & 0xFFFFFFFF).to_bytes(4, "little")
            at = code.find(needle)
            while at >= 0:
                yield at, len(needle), name
                at = code.find(needle, at + 1)
