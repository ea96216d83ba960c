"""-fpatchable-function-entry=N[,M]: where, among the nops an entry of __patchable_function_entries lists,
a function is entered, and whether a call fits there.

Each entry is the address of the first of N nop bytes, M of them before the
function's symbol (gcc and clang write one-byte `90` there) and N-M where the
function is entered: after its `endbr64` where -fcf-protection put one (at the
symbol, the M nops before it), else at the symbol. gcc writes N-M one-byte `90`;
clang one nop of N-M bytes on x86-64 (`0f 1f 44 00 08` for 5; for more than 10, a
10-byte one first) and `66 90` pairs on i386 (`66 90 66 90 90` for 5). The site is
the 5 bytes a call takes, run on to the end of the nop they split where that is
longer (x86.PATCHABLE_NOPS): a call there is followed by a nop that fills the rest
(x86.FILLERS), so that the code stays instructions. Where the function starts is
read from its symbol (or a linked file's unwind tables), never guessed from the
bytes: gcc's 90s do not say where M ends. Objects and linked files each give their
own reader of bytes and their function starts; this module knows neither.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .x86 import ENDBR, LONG_PATCHABLE_NOPS, Arch, decode, hexbytes, nops

SECTION = "__patchable_function_entries"


@dataclass(frozen=True)
class Place:
    """Where a listed entry's function is entered, and what is there."""

    listed: int  # the entry's address: its first nop
    site: int  # where the function is entered: the 5 bytes a call would take
    code: bytes  # the bytes there: 5, or to the end of a nop longer than a call (x86.PATCHABLE_NOPS)


def place(
    listed: int, read: Callable[[int, int], bytes], starts: Sequence[int], arch: Arch, where: Callable[[int], str]
) -> Place | str:
    """The site of the entry that lists `listed`, or why no call can go there (a sentence after its place).

    `read(at, n)`: n bytes at `at` (fewer at the end of the code); `starts`: the sorted starts of the
    functions, in the same addresses as `listed`; `where(at)`: a place for a message."""
    i = bisect_left(starts, listed)
    if listed - 4 in starts and read(listed - 4, 4) in ENDBR:
        site = listed  # M = 0, after endbr64: the entry lists the nops, not the function's symbol
    elif i < len(starts) and starts[i] == listed:
        site = listed  # M = 0
    elif i < len(starts):
        start = starts[i]
        before = read(listed, start - listed)
        if before != b"\x90" * (start - listed):
            return (
                f"{where(listed)}: an entry of {SECTION} lists this place, but the {start - listed} bytes from it to "
                f"the next function ({where(start)}) are not the nops -fpatchable-function-entry puts before a "
                "function"
            )
        site = start + 4 if read(start, 4) in ENDBR else start
    else:
        return f"{where(listed)}: an entry of {SECTION} lists this place, but no function starts there or after it"
    code = read(site, 5)
    if len(code) == 5 and code in nops(5, arch):
        return Place(listed, site, code)
    # A nop longer than a call (clang's for N-M > 5): the site runs to its end, where a call and a filler end too.
    run = read(site, max(map(len, LONG_PATCHABLE_NOPS)))
    long = next((nop for nop in LONG_PATCHABLE_NOPS if run.startswith(nop)), None)
    if long is not None:
        return Place(listed, site, long)
    count = _nop_run(read(site, 32), arch)
    if count and count < 5:
        return (
            f"{where(site)}: -fpatchable-function-entry left {count} nop bytes where the function is entered "
            f"(N-M = {count}), and a call takes 5: build with N-M of at least 5 (-fpatchable-function-entry=5)"
        )
    if count:
        return (
            f"{where(site)}: -fpatchable-function-entry left {count} nop bytes where the function is entered "
            f"(N-M = {count}), but they begin with {hexbytes(run[:count])}, no nop gcc 12 or clang 14 writes "
            "there, so ftpatch could not give it back after a call: build with gcc 12 or clang 14"
        )
    # Neither a nop a call can replace nor too few nop bytes: a site still, whose bytes verification refuses.
    return Place(listed, site, code)


def _nop_run(code: bytes, arch: Arch) -> int:
    """How many bytes of nop instructions `code` begins with."""
    end = 0
    for ins in decode(code, arch):
        # capstone calls `66 90` (clang's 2-byte nop on i386) xchg %ax,%ax, which it is, and a nop.
        if not ins.text.startswith("nop") and code[ins.offset : ins.offset + ins.size] != b"\x66\x90":
            break
        end = ins.offset + ins.size
    return end
