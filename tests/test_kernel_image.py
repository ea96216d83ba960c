"""Kernel images: the site table between __start_mcount_loc and __stop_mcount_loc is the exact list of sites.

A small image is built here as the kernel is linked (fixtures/kernel-image: gcc -pg -mfentry -mrecord-mcount,
a linker script that gathers every __mcount_loc there), with a function no symbol names whose site only the
table lists. Debian's own vmlinux is tested where bench/prepare.sh's cache holds it (an 855 MB download).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from conftest import FIXTURES, ftpatch, run

import ftpatch as lib

SOURCES = FIXTURES / "kernel-image"
CFLAGS = ["-O2", "-pg", "-mfentry", "-mrecord-mcount", "-fno-pie", "-ffreestanding", "-fno-stack-protector"]
VMLINUX = Path("/var/tmp/ftpatch-bench/vmlinux")
ENTRY_NOP = bytes.fromhex("0f1f440008")  # p6's 5-byte nop at a function's entry


def link_image(tmp: Path, script: str) -> Path:
    run("gcc", *CFLAGS, "-fcf-protection=none", "-c", SOURCES / "image.c", "-o", tmp / "image.o")
    run("gcc", "-c", SOURCES / "entry.S", "-o", tmp / "entry.o")
    (tmp / "image.lds").write_text(script)
    image = tmp / "image"
    run("ld", "--no-warn-rwx-segments", "-T", tmp / "image.lds", tmp / "image.o", tmp / "entry.o", "-o", image)
    return image


def calls_made(image: Path) -> int:
    """The image's exit status: how many times its __fentry__ ran."""
    return subprocess.run([image], capture_output=True).returncode


def table(path: Path) -> list[int]:
    """The addresses between __start_mcount_loc and __stop_mcount_loc, read with nm and readelf, not ftpatch."""
    symbols = {}
    for line in run("nm", path).splitlines():
        value, _kind, name = line.split()
        if name in ("__start_mcount_loc", "__stop_mcount_loc"):
            symbols[name] = int(value, 16)
    start, stop = symbols["__start_mcount_loc"], symbols["__stop_mcount_loc"]
    for line in run("readelf", "-SW", path).splitlines():
        m = re.match(r"\s*\[\s*\d+\]\s+\S+\s+PROGBITS\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)", line)
        if m and int(m[1], 16) <= start < int(m[1], 16) + int(m[3], 16):
            with path.open("rb") as f:
                f.seek(int(m[2], 16) + start - int(m[1], 16))
                raw = f.read(stop - start)
            return sorted(int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8))
    raise AssertionError("no section holds the table")


def addresses(result: lib.ScanResult) -> list[int]:
    """Each site's address: its section's sh_addr plus its offset."""
    return sorted(g.sections[i].sh_addr + g.starts[i] for g in result.groups for i in range(len(g)))


KERNEL_LDS = """ENTRY(_start)
SECTIONS {
  . = 0x400000;
  .text : { *(.text .text.*) }
  .rodata : { *(.rodata .rodata.*) }
  .init.data : { __start_mcount_loc = .; KEEP(*(__mcount_loc)) __stop_mcount_loc = .; }
  .bss : { *(.bss) }
  /DISCARD/ : { *(.eh_frame) *(.comment) }
}
"""


def test_a_kernel_style_image_uses_its_table(tmp: Path) -> None:
    image = link_image(tmp, KERNEL_LDS)
    assert calls_made(image) == 4
    assert "__mcount_loc" not in run("readelf", "-SW", image)  # the table is inside .init.data, as in vmlinux
    result = lib.scan(str(image))
    assert addresses(result) == table(image) and len(result.sites) == 4
    # The site the table alone lists, at the entry of code no symbol names, is named by no function.
    unnamed = [s for s in result.sites if s.function is None]
    assert len(unnamed) == 1 and {s.function for s in result.sites} == {"main", "twice", "helper", None}
    nopped, back = tmp / "image.nop", tmp / "image.back"
    proc = ftpatch("nop", image, "-o", nopped)
    assert proc.returncode == 0 and "4 patched" in proc.stdout, proc.stderr
    data = nopped.read_bytes()
    assert all(data[s.file_offset : s.file_offset + 5] == ENTRY_NOP for s in result.sites)
    assert calls_made(nopped) == 0
    proc = ftpatch("call", nopped, "-o", back)
    assert proc.returncode == 0 and "4 patched" in proc.stdout, proc.stderr
    assert back.read_bytes() == image.read_bytes()


def test_without_the_table_the_unnamed_site_is_refused(tmp: Path) -> None:
    """What the table brings: the same image without it has a call to __fentry__ no function's decoding reaches,
    and nop refuses to leave it live."""
    image = link_image(
        tmp,
        KERNEL_LDS.replace("__start_mcount_loc = .; KEEP(*(__mcount_loc)) __stop_mcount_loc = .;", "").replace(
            "/DISCARD/ : {", "/DISCARD/ : { *(__mcount_loc)"
        ),
    )
    proc = ftpatch("nop", image, "-o", tmp / "out")
    assert proc.returncode == 1 and "a call to a profiling target that is not at a site ftpatch knows" in proc.stderr
    assert not (tmp / "out").exists()


@pytest.mark.skipif(
    not VMLINUX.exists(),
    reason=f"{VMLINUX} is not cached: apt-get download linux-image-6.1.0-*-amd64-dbg (855 MB) and extract its "
    "usr/lib/debug/boot/vmlinux-* there with dpkg-deb",
)
def test_debian_vmlinux_round_trips(tmp: Path) -> None:
    listed = table(VMLINUX)
    result = lib.scan(str(VMLINUX))
    assert addresses(result) == listed and len(listed) > 40_000
    assert {(s.target, s.state) for s in result.sites} == {("__fentry__", lib.State.CALL)}
    # Sites at entries of code no symbol names (615 in 6.1.0-47, the image has no unwind tables).
    named = {int(value, 16) for value, kind, *_ in map(str.split, run("nm", VMLINUX).splitlines()) if kind in "tTwW"}
    sh_addr = {sec.name: sec.sh_addr for g in result.groups for sec in g.sections}
    unnamed = [sh_addr[s.section] + s.offset for s in result.sites if s.function is None]
    assert len(unnamed) > 100 and not named & set(unnamed)
    nopped, back = tmp / "vmlinux.nop", tmp / "vmlinux.back"
    proc = ftpatch("nop", VMLINUX, "-o", nopped)
    assert proc.returncode == 0 and f"{len(listed)} patched" in proc.stdout, proc.stderr
    with nopped.open("rb") as f:
        data = f.read()
    assert all(data[s.file_offset : s.file_offset + 5] == ENTRY_NOP for s in result.sites)
    del data
    proc = ftpatch("call", nopped, "-o", back)
    assert proc.returncode == 0 and f"{len(listed)} patched" in proc.stdout, proc.stderr
    assert run("cmp", VMLINUX, back) == ""
