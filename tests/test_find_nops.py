"""x86.find_nops finds what a search of every byte finds, in code gcc wrote with its padding nops around ftpatch's.

find_nops searches a few cores with what may follow them (x86._core_search), so that the compiler's
`0f 1f 44 00 00` padding, which holds p6's core, is passed over in C. These tests hold it to its plain meaning:
the longest nop of `wanted` at each start, none that begins a byte inside a 6-byte one, none that crosses the
window's ends.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from ftpatch.elf import ElfFile
from ftpatch.x86 import _CORES, I386, X32, X86_64, Arch, find_marked_nops, find_nops, ftpatch_nops, marked_nops

# Functions of many lengths, so that gcc pads between them with its own nops (on i386 `lea 0(%esi,%eiz),%esi`,
# which holds the core of ftpatch's lea nops), each with a branch the way the kernel's static keys make one: a
# 5-byte p6 nop in an asm goto (arch_static_branch), which holds the core of ftpatch's p6 nops. Kernel modules
# hold about ten of these each.
SOURCE = "\n".join(
    f'int f{i}(int x) {{ asm goto(".byte 0x0f,0x1f,0x44,0x00,0x00" : : : : on); return '
    + " + ".join(f"(x >> {j % 7}) * {i + j + 3}" for j in range(i % 9 + 1))
    + "; on: return -x; }"
    for i in range(60)
)
PADDING = {"x86_64": b"\x0f\x1f\x44\x00\x00", "i386": b"\x8d\x74\x26\x00"}


def searched(data: bytes, wanted: frozenset[bytes], start: int, end: int) -> dict[int, bytes]:
    """find_nops's meaning, a byte at a time."""
    starts: dict[int, bytes] = {}
    for at in range(start, end):
        here = [nop for nop in wanted if at + len(nop) <= end and data[at : at + len(nop)] == nop]
        if here:
            starts[at] = max(here, key=len)
    found: dict[int, bytes] = {}
    for at in sorted(starts):
        if len(found.get(at - 1, b"")) != 6:
            found[at] = starts[at]
    return found


@pytest.fixture(scope="module", params=[X86_64, I386], ids=["x86_64", "i386"])
def code(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Arch, bytes]:
    arch: Arch = request.param
    work = tmp_path_factory.mktemp("find-nops")
    (work / "pad.c").write_text(SOURCE)
    flags = ["-m32"] if arch is I386 else []
    subprocess.run(["gcc", *flags, "-O2", "-c", "pad.c"], cwd=work, check=True)
    elf = ElfFile(Path(work / "pad.o").read_bytes())
    text = bytes(elf.section_data(elf.section_named(".text")))
    assert text.count(b"\x0f\x1f\x44\x00\x00") >= 60
    assert text.count(PADDING[arch.name]) >= 10
    return arch, text


def planted(text: bytes, nops: list[bytes], seed: int) -> bytes:
    """The code with every nop written over it somewhere, some of them next to or over each other."""
    rng = random.Random(seed)
    out = bytearray(text)
    for nop in nops:
        for at in (rng.randrange(len(out) - len(nop)), rng.choice([0, len(out) - len(nop)])):
            out[at : at + len(nop)] = nop
            if rng.random() < 0.3:  # another right behind it, or a byte inside it
                other = rng.choice(nops)
                at += rng.choice([len(nop), 1])
                out[at : at + len(other)] = other[: len(out) - at]
    return bytes(out)


@pytest.mark.parametrize("seed", range(4))
def test_every_nop_ftpatch_writes_is_found_where_a_byte_search_finds_it(code: tuple[Arch, bytes], seed: int) -> None:
    arch, text = code
    wanted = ftpatch_nops(arch)
    data = planted(text, sorted(wanted), seed)
    for start, end in ((0, len(data)), (3, len(data) - 5), (len(data) // 3, 2 * len(data) // 3)):
        assert find_nops(data, wanted, start, end) == searched(data, wanted, start, end)
    assert len(find_nops(data, wanted)) >= len(wanted) // 2  # the plants were found, not just agreed on


def test_marked_nops_are_found_where_a_byte_search_finds_them(code: tuple[Arch, bytes]) -> None:
    arch, text = code
    marked = frozenset(n for length in (6, 5) for n in marked_nops(length, arch) if n[0] != 0xEB or n[2] != 0xCC)
    data = planted(text, sorted(marked), 7)
    assert find_marked_nops(data, arch) == searched(data, marked, 0, len(data)) != {}


def test_the_compilers_own_nops_are_found_as_a_byte_search_finds_them(code: tuple[Arch, bytes]) -> None:
    arch, text = code
    found = find_nops(text, ftpatch_nops(arch))
    assert found == searched(text, ftpatch_nops(arch), 0, len(text))
    # x86-64: none of gcc's nops is one of ftpatch's. i386: gcc pads with `lea 0(%esi),%esi` (8d b6 00 00 00 00),
    # which is ftpatch's lea nop for a 6-byte site too.
    assert set(found.values()) <= ({b"\x8d\xb6\x00\x00\x00\x00"} if arch is I386 else set())


@pytest.mark.parametrize("arch", [X86_64, X32, I386], ids=["x86_64", "x32", "i386"])
def test_no_core_begins_inside_itself(arch: Arch) -> None:
    # find_nops's search takes the whole core at each match (x86._core_search): a core that began again inside
    # itself would hide the second start. A nop that holds none of the cores is its own core.
    nops = ftpatch_nops(arch) | {n for length in (6, 5) for n in marked_nops(length, arch)}
    for core in {next((c for c in _CORES if c in nop), nop) for nop in nops}:
        assert not any(core[i:] == core[: len(core) - i] for i in range(1, len(core))), core.hex()
