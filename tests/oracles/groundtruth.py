#!/usr/bin/env python3
"""Ground truth of profiling call sites in a linked x86 ELF file, independent of ftpatch.

A site is a call instruction in an executable section whose target resolves to mcount, _mcount or
__fentry__, or a direct jmp to one outside the PLT (a tail call: clang's LTO writes `jmp mcount@plt` where a
function's last act was an inlined function's mcount call). The targets are worked out from binutils alone (`objdump -d -w`, `readelf`), never from ftpatch:

- `call ADDR` where ADDR is a definition of a target (static programs), or a PLT stub whose indirect jmp
  goes through a profiling slot (lazy `.plt`, `.plt.sec`, `.plt.got`, i386 `jmp *abs32` and `jmp *d(%ebx)`);
- `addr32 call ADDR` (`67 e8`, a GOT call the linker relaxed), the same way;
- `call *d(%rip)` whose slot (objdump's `# addr` comment) is a profiling slot;
- i386 `call *d(%ebx)` where the GOT base + d is a profiling slot.

A profiling slot is an address that a `GLOB_DAT`/`JUMP_SLOT`/absolute dynamic relocation fills with a target,
or, in a static program, a word of `.got`/`.got.plt` whose contents read from the file equal a target's address
(i386 `-static` with gold and lld keeps `ff 93` through such a slot).
`__mcount_loc`, where the file has one, is read as a second, exact list (`-mrecord-mcount`).

A stripped file is read with a `reference`: the unstripped file it was made from. `strip` moves no allocated
section, so that file's symbols, relocations and GOT base name the same addresses.

CLI: `python3 tests/oracles/groundtruth.py FILE [--reference UNSTRIPPED] [--json]`.
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

TARGETS = frozenset({"mcount", "_mcount", "__fentry__"})
# Relocations that fill a pointer-sized slot with the symbol's address.
SLOT_RELOCS = frozenset(
    {"R_X86_64_GLOB_DAT", "R_X86_64_JUMP_SLOT", "R_X86_64_64", "R_386_GLOB_DAT", "R_386_JUMP_SLOT", "R_386_32"}
)
# x32's R_X86_64_RELATIVE64 fills 8 bytes (bfd relocates gcc's 8-byte __mcount_loc entries with it).
RELATIVE_RELOCS = frozenset({"R_X86_64_RELATIVE", "R_X86_64_RELATIVE64", "R_386_RELATIVE"})

_INSN = re.compile(r"^\s*([0-9a-f]+):\t([0-9a-f ]+?)\s*\t(.*)$")
_LABEL = re.compile(r"^([0-9a-f]+) <(.*)>:$")
_SECTION = re.compile(r"^Disassembly of section (\S+):$")
# Prefixes objdump prints as words before the mnemonic (bnd for MPX-era PLTs, addr32 for 67 e8, notrack for CET).
_PREFIXES = r"(?:(?:addr32|addr16|data16|data32|bnd|notrack|cs|ds|rex\.?W?)\s+)*"
_CALL = re.compile(rf"^{_PREFIXES}call[lqw]?\s+(.*)$")
_JMP = re.compile(rf"^{_PREFIXES}jmp[lqw]?\s+(.*)$")
_DIRECT = re.compile(r"^(?:0x)?([0-9a-f]+)(?:\s|$)")  # stripped files: no <name>, a 0x prefix
_RIP = re.compile(r"^\*[-+]?(?:0x)?[0-9a-f]*\(%rip\)\s*#\s*(?:0x)?([0-9a-f]+)")
_EBX = re.compile(r"^\*(-?)(?:0x([0-9a-f]+))?\(%ebx\)$")
_ABS = re.compile(r"^\*(?:%ds:)?0x([0-9a-f]+)$")


def run(*cmd: str | Path, cwd: Path | None = None) -> str:
    """A tool's stdout; it must exit 0."""
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=True, cwd=cwd).stdout


@dataclass(frozen=True)
class Section:
    name: str
    type: str
    address: int
    offset: int
    size: int
    flags: str


@dataclass(frozen=True)
class Symbol:
    name: str
    value: int
    size: int
    type: str
    section: str  # readelf's Ndx: a number, UND, ABS


@dataclass(frozen=True)
class Reloc:
    section: str
    offset: int
    type: str
    symbol: str  # without @VERSION
    addend: int | None


@dataclass(frozen=True)
class Site:
    address: int
    length: int
    insn: str  # the bytes, hex
    text: str  # objdump's text of the instruction
    how: str  # how its target was resolved
    section: str
    function: str | None


@dataclass
class ElfInfo:
    """What readelf says about a file: sections, symbols, relocations, dynamic tags."""

    path: Path
    bits: int
    x86_64: bool  # the instruction set: x32 is ELFCLASS32 (32 bits) with EM_X86_64
    type: str
    sections: list[Section]
    symbols: list[Symbol]
    relocs: list[Reloc]
    dynamic: dict[str, int]

    @classmethod
    def read(cls, path: Path) -> ElfInfo:
        header = run("readelf", "-hW", path)
        bits = 64 if re.search(r"Class:\s+ELF64", header) else 32
        etype = re.search(r"Type:\s+(\S+)", header).group(1)  # type: ignore[union-attr]
        x86_64 = bool(re.search(r"Machine:\s+Advanced Micro Devices X86-64", header))
        return cls(path, bits, x86_64, etype, _sections(path), _symbols(path), relocations(path), _dynamic(path))

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    def section_at(self, address: int) -> Section | None:
        for s in self.sections:
            if s.address and s.address <= address < s.address + s.size and "A" in s.flags:
                return s
        return None

    def read_at(self, data: bytes, address: int, size: int) -> bytes | None:
        """`size` bytes at virtual `address`, from the file's contents; None for NOBITS or unmapped."""
        s = self.section_at(address)
        if s is None or s.type == "NOBITS" or address + size > s.address + s.size:
            return None
        start = s.offset + address - s.address
        return data[start : start + size]

    def functions(self) -> list[Symbol]:
        """FUNC symbols with a size, .symtab's and .dynsym's (duplicates removed), sorted by address."""
        seen = {(s.name, s.value, s.size) for s in self.symbols if s.type in ("FUNC", "IFUNC") and s.size > 0}
        return [Symbol(n, v, z, "FUNC", "") for n, v, z in sorted(seen, key=lambda t: (t[1], t[0]))]


def _int(text: str) -> int:
    return int(text, 16) if text.startswith("0x") else int(text)


def _sections(path: Path) -> list[Section]:
    out = []
    for line in run("readelf", "-SW", path).splitlines():
        m = re.match(r"\s*\[\s*(\d+)\]\s+(\S*)\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+\S+\s+(\S*)", line)
        if m and m.group(1) != "0":
            flags = m.group(7) if not m.group(7).isdigit() else ""
            out.append(
                Section(m.group(2), m.group(3), int(m.group(4), 16), int(m.group(5), 16), int(m.group(6), 16), flags)
            )
    return out


def _symbols(path: Path) -> list[Symbol]:
    out = []
    for line in run("readelf", "-sW", path).splitlines():
        m = re.match(r"\s*\d+:\s+([0-9a-f]+)\s+(\S+)\s+(\S+)\s+\S+\s+\S+\s+(\S+)\s+(\S+)", line)
        if m:
            name = m.group(5).split("@")[0]
            out.append(Symbol(name, int(m.group(1), 16), _int(m.group(2)), m.group(3), m.group(4)))
    return out


def relocations(path: Path) -> list[Reloc]:
    """Every entry `readelf -rW` prints, its symbol without @VERSION."""
    out = []
    section = ""
    for line in run("readelf", "-rW", path).splitlines():
        if m := re.match(r"Relocation section '([^']+)'", line):
            section = m.group(1)
            continue
        # offset info type [symvalue name [+|- addend]] | [addend]  (RELA without symbol prints just the addend)
        m = re.match(r"([0-9a-f]{8,16})\s+[0-9a-f]+\s+(R_\w+)\s*(.*)$", line)
        if not m:
            continue
        rest = m.group(3).split()
        symbol, addend = "", None
        if len(rest) == 1:
            addend = int(rest[0], 16)
        elif len(rest) >= 2:
            symbol = rest[1].split("@")[0]
            if len(rest) >= 4:
                addend = int(rest[3], 16) * (-1 if rest[2] == "-" else 1)
        out.append(Reloc(section, int(m.group(1), 16), m.group(2), symbol, addend))
    return out


def _dynamic(path: Path) -> dict[str, int]:
    out = {}
    for line in run("readelf", "-dW", path).splitlines():
        m = re.match(r"\s*0x[0-9a-f]+\s+\((\w+)\)\s+(0x[0-9a-f]+)", line)
        if m:
            out[m.group(1)] = int(m.group(2), 16)
    return out


@dataclass
class Insn:
    address: int
    length: int
    text: str
    raw: str
    section: str
    label: str | None


def disassemble(path: Path) -> tuple[list[Insn], dict[int, Insn]]:
    """The call instructions of every executable section, and the jmp/endbr instructions by address (for stubs).

    objdump's linear sweep can desync on data in text; `crosscheck()` compares the result with the objects.
    """
    calls: list[Insn] = []
    stubs: dict[int, Insn] = {}
    section, label = "", None
    with subprocess.Popen(["objdump", "-d", "-w", str(path)], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "\t" not in line:
                if m := _SECTION.match(line):
                    section, label = m.group(1), None
                elif m := _LABEL.match(line.rstrip("\n")):
                    label = m.group(2)
                continue
            if not ("call" in line or "jmp" in line or "endbr" in line):
                continue
            m = _INSN.match(line.rstrip("\n"))
            if not m:
                continue
            raw = m.group(2).replace(" ", "")
            insn = Insn(int(m.group(1), 16), len(raw) // 2, m.group(3).strip(), raw, section, label)
            if _CALL.match(insn.text):
                calls.append(insn)
            elif _JMP.match(insn.text) or insn.text.startswith("endbr"):
                stubs[insn.address] = insn
                # A direct jmp outside the PLT may be a tail call to a target (clang's LTO: jmp mcount@plt).
                if not section.startswith(".plt") and (j := _JMP.match(insn.text)) and not j.group(1).startswith("*"):
                    calls.append(insn)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, ["objdump", "-d", "-w", str(path)])
    return calls, stubs


@dataclass
class GroundTruth:
    path: str
    bits: int
    sites: list[Site]  # live calls to a target
    recorded: list[int] | None  # __mcount_loc entries (addresses), None without __mcount_loc
    targets: dict[str, list[str]]  # how targets resolve: definitions, slots, stubs (hex addresses)
    got_base: int | None
    warnings: list[str] = field(default_factory=list)

    @property
    def addresses(self) -> set[int]:
        return {s.address for s in self.sites}

    def resolvable(self) -> bool:
        """Whether the file has anything a call to a target could go through (a definition, a slot, a stub)."""
        return any(self.targets.values())

    def to_json(self) -> dict:
        d = asdict(self)
        d["sites"] = [{**asdict(s), "address": hex(s.address)} for s in self.sites]
        d["recorded"] = None if self.recorded is None else [hex(a) for a in self.recorded]
        return d


class Resolver:
    """Decides whether a call's target is a profiling target, from one file's (or its reference's) readelf view."""

    def __init__(self, info: ElfInfo, data: bytes):
        self.info = info
        self.definitions = {
            s.value for s in info.symbols if s.name in TARGETS and s.section not in ("UND",) and s.value != 0
        }
        self.slots = {r.offset for r in info.relocs if r.symbol in TARGETS and r.type in SLOT_RELOCS}
        self.static_slots: set[int] = set()
        if self.definitions:
            # A static link fills GOT slots at link time, with no relocation left: read their contents.
            word = 8 if info.bits == 64 else 4
            fmt = "<Q" if word == 8 else "<I"
            for s in info.sections:
                if s.name in (".got", ".got.plt") and s.type != "NOBITS":
                    for off in range(0, s.size - word + 1, word):
                        (value,) = struct.unpack_from(fmt, data, s.offset + off)
                        if value in self.definitions:
                            self.static_slots.add(s.address + off)
        self.got_base = self._got_base()
        self.stubs: dict[int, str] = {}

    def _got_base(self) -> int | None:
        """i386's %ebx in PIC code: _GLOBAL_OFFSET_TABLE_, which the linkers put at .got.plt (or .got without it)."""
        got = next((s.value for s in self.info.symbols if s.name == "_GLOBAL_OFFSET_TABLE_"), None)
        if got is not None:
            return got
        if "PLTGOT" in self.info.dynamic:
            return self.info.dynamic["PLTGOT"]
        for name in (".got.plt", ".got"):
            if s := self.info.section(name):
                return s.address
        return None

    def slot_of(self, operand: str) -> int | None:
        """The memory slot an indirect call/jmp operand reads, or None when it is not through a fixed slot."""
        if m := _RIP.match(operand):
            return int(m.group(1), 16)
        if (m := _EBX.match(operand)) and self.got_base is not None:
            disp = int(m.group(2) or "0", 16) * (-1 if m.group(1) else 1)
            return (self.got_base + disp) & ((1 << self.info.bits) - 1)
        if (m := _ABS.match(operand)) and self.info.bits == 32:
            return int(m.group(1), 16)
        return None

    def slot_kind(self, slot: int | None) -> str | None:
        if slot is None:
            return None
        if slot in self.slots:
            return "slot"
        if slot in self.static_slots:
            return "static-slot"
        return None

    def stub_kind(self, target: int, stubs: dict[int, Insn]) -> str | None:
        """`target` is a PLT stub when (after an endbr) its first instruction jumps through a profiling slot."""
        insn = stubs.get(target)
        if insn is not None and insn.text.startswith("endbr"):
            insn = stubs.get(target + insn.length)
        if insn is None or not (m := _JMP.match(insn.text)):
            return None
        kind = self.slot_kind(self.slot_of(m.group(1)))
        return f"stub({insn.section})->{kind}" if kind else None


def mcount_loc(info: ElfInfo, data: bytes) -> list[int] | None:
    """The addresses __mcount_loc lists: each entry, or the addend of the RELATIVE relocation that fills it (PIE).
    gcc writes `.quad` entries for the x86-64 instruction set, x32 included, `.long` for i386."""
    s = info.section("__mcount_loc")
    if s is None:
        return None
    word = 8 if info.x86_64 else 4
    fmt = "<Q" if word == 8 else "<I"
    relative = {r.offset: r.addend for r in info.relocs if r.type in RELATIVE_RELOCS and r.addend is not None}
    out = []
    for off in range(0, s.size - word + 1, word):
        (stored,) = struct.unpack_from(fmt, data, s.offset + off)
        value = relative.get(s.address + off)
        out.append(value if value is not None else stored)
    return sorted(out)


def function_at(functions: list[Symbol], address: int) -> str | None:
    f = symbol_at(functions, address)
    return f.name if f else None


def symbol_at(functions: list[Symbol], address: int) -> Symbol | None:
    best = None
    for f in functions:
        if f.value <= address < f.value + f.size:
            best = f
        elif f.value > address:
            break
    return best


def ground_truth(path: Path, reference: Path | None = None) -> GroundTruth:
    """Every live call to a profiling target in `path` (symbols and relocations from `reference`, if given)."""
    info = ElfInfo.read(path)
    data = path.read_bytes()
    ref = ElfInfo.read(reference) if reference else info
    ref_data = reference.read_bytes() if reference else data
    resolver = Resolver(ref, ref_data)
    functions = ref.functions()
    calls, stubs = disassemble(path)
    sites = []
    for insn in calls:
        call = _CALL.match(insn.text)
        operand = (call or _JMP.match(insn.text)).group(1)  # type: ignore[union-attr]
        how = None
        if operand.startswith("*"):
            how = resolver.slot_kind(resolver.slot_of(operand))
            if how and "%ebx" in operand:
                how = f"ebx-{how}"
        elif m := _DIRECT.match(operand):
            target = int(m.group(1), 16)
            if target in resolver.definitions:
                how = "direct"
            elif target not in resolver.stubs:
                resolver.stubs[target] = resolver.stub_kind(target, stubs) or ""
            how = how or resolver.stubs.get(target) or None
        if how and not call:
            how = f"tail-{how}"  # jmp mcount: the call and the return at once
        if how:
            fn = function_at(functions, insn.address) if functions else insn.label
            sites.append(Site(insn.address, insn.length, insn.raw, insn.text, how, insn.section, fn))
    targets = {
        "definitions": sorted(hex(a) for a in resolver.definitions),
        "slots": sorted(hex(a) for a in resolver.slots),
        "static_slots": sorted(hex(a) for a in resolver.static_slots),
        "stubs": sorted(hex(a) for a, k in resolver.stubs.items() if k),
    }
    gt = GroundTruth(str(path), info.bits, sites, mcount_loc(ref, ref_data), targets, resolver.got_base)
    # Two sites in one function means a call that is not a -pg site, or a desynchronised sweep (or clang's LTO,
    # which keeps the mcount call of each function it inlines). Static functions may share a name: key by address.
    per_function: Counter[tuple[str, int]] = Counter()
    for site in sites:
        if f := symbol_at(functions, site.address):
            per_function[(f.name, f.value)] += 1
    for (name, value), n in per_function.items():
        if n > 1:
            gt.warnings.append(f"{name} ({value:#x}) holds {n} sites")
    return gt


def object_functions_with_sites(objects: list[Path]) -> tuple[Counter[str], int]:
    """(how many functions of each name hold a relocation against a target, total such relocations) in `objects`.

    This is the compile-time count: each -pg function holds one site, in the object that defines it.
    """
    names: Counter[str] = Counter()
    total = 0
    for obj in objects:
        info = ElfInfo.read(obj)
        index = {str(i + 1): s.name for i, s in enumerate(info.sections)}
        by_section: dict[str, list[Symbol]] = {}
        for sym in info.symbols:
            if sym.type == "FUNC" and sym.size > 0:
                by_section.setdefault(index.get(sym.section, ""), []).append(sym)
        holders = set()
        for r in info.relocs:
            if r.symbol not in TARGETS or "mcount_loc" in r.section:
                continue
            total += 1
            target = re.sub(r"^\.rela?", "", r.section)
            for sym in by_section.get(target, []):
                if sym.value <= r.offset < sym.value + sym.size:
                    holders.add((target, sym.value, sym.name))
        names.update(name for _, _, name in holders)
    return names, total


def crosscheck(gt: GroundTruth, path: Path, expected: Counter[str]) -> list[str]:
    """Differences between the sites per function name in the linked file and in its objects.

    A name with a site in some object but none in the file (while the file defines it) is a site objdump missed;
    a name with more sites in the file than in all objects is a call that is not a -pg site.
    Inlining and COMDAT folding only remove functions, so neither shows up as a difference.
    """
    info = ElfInfo.read(path)
    present: Counter[str] = Counter(f.name for f in info.functions())
    with_site: Counter[str] = Counter()
    by_name: dict[str, set[str]] = {}
    for f in info.functions():
        if any(f.value <= a < f.value + f.size for a in gt.addresses):
            with_site[f.name] += 1
            by_name.setdefault(f.name, set())
    problems = []
    for name in sorted(set(expected) | set(with_site)):
        if expected[name] and present[name] and not with_site[name]:
            problems.append(f"{name}: a site in the objects, none found in the file")
        elif with_site[name] > expected[name]:
            problems.append(f"{name}: {with_site[name]} with a site in the file, {expected[name]} in the objects")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--reference", type=Path, help="the unstripped file a stripped FILE was made from")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    gt = ground_truth(args.file, args.reference)
    if args.json:
        json.dump(gt.to_json(), sys.stdout, indent=2)
        print()
        return 0
    for s in gt.sites:
        print(f"{s.address:#x}\t{s.insn}\t{s.how}\t{s.function or '?'}\t{s.text}")
    print(
        f"{len(gt.sites)} sites; __mcount_loc: {'none' if gt.recorded is None else len(gt.recorded)}", file=sys.stderr
    )
    for w in gt.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
