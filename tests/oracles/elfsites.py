#!/usr/bin/env python3
"""The tests' and the benchmarks' stdlib reader of objects (not part of ftpatch, and sharing nothing with it).

Finds mcount/__fentry__ call sites (relocations naming one of those symbols,
in REL/RELA sections that apply to executable sections), where __mcount_loc's
entries point (tests/conftest.py's call_places and table_places), and checks,
after a tool ran, whether each site is still a call or was changed (nopped),
and how many entries ended up in __mcount_loc (bench/bench_recordmcount.py).

CLI:
  elfsites.py count PATH...         totals for files / directories (recursive)
  elfsites.py check PRISTINE WORK   compare a processed copy with the pristine one
  elfsites.py loc DIR               JSON: every file's __mcount_loc entries, as sorted "section+0xoffset"
"""

import hashlib
import json
import os
import struct
import sys
from array import array

MCOUNT_NAMES = (b"__fentry__", b"mcount", b"_mcount", b"__mcount")
SHT_RELA, SHT_REL = 4, 9
SHF_EXECINSTR = 0x4

# relocation type -> (bytes before r_offset where the instruction starts, insn length)
X86_64_SITE = {2: (1, 5), 4: (1, 5), 9: (2, 6), 41: (2, 6)}  # PC32, PLT32, GOTPCREL, GOTPCRELX
I386_SITE = {2: (1, 5), 4: (1, 5), 3: (2, 6), 43: (2, 6)}  # PC32, PLT32, GOT32, GOT32X
CALL_PREFIXES = (b"\xe8", b"\xff\x15", b"\xff\x93")


class Elf:
    """Section headers of one little-endian ELF file held in memory."""

    def __init__(self, data):
        if data[:4] != b"\x7fELF":
            raise ValueError("not ELF")
        if data[5] != 1:
            raise ValueError("big-endian ELF not supported")
        self.data = data
        self.is64 = data[4] == 2
        if self.is64:
            (self.machine,) = struct.unpack_from("<H", data, 18)
            (shoff,) = struct.unpack_from("<Q", data, 0x28)
            shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
            fmt = "<IIQQQQIIQQ"
        else:
            (self.machine,) = struct.unpack_from("<H", data, 18)
            (shoff,) = struct.unpack_from("<I", data, 0x20)
            shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x2E)
            fmt = "<IIIIIIIIII"
        self.sh = []
        if shoff == 0:
            return
        first = struct.unpack_from(fmt, data, shoff)
        if shnum == 0:
            shnum = first[5]
        if shstrndx == 0xFFFF:
            shstrndx = first[6]
        for i in range(shnum):
            # name, type, flags, addr, offset, size, link, info, align, entsize
            self.sh.append(struct.unpack_from(fmt, data, shoff + i * shentsize))
        stro = self.sh[shstrndx][4]
        self.names = []
        for s in self.sh:
            end = data.index(b"\0", stro + s[0])
            self.names.append(bytes(data[stro + s[0] : end]))

    def index_of(self, name):
        try:
            return self.names.index(name)
        except ValueError:
            return -1

    def mcount_loc_entries(self):
        """Entries in __mcount_loc (0 if absent): 8 bytes each for the x86-64 instruction set (x32's too), 4 on i386."""
        i = self.index_of(b"__mcount_loc")
        if i < 0:
            return 0
        return self.sh[i][5] // (8 if self.machine == 62 else 4)


def _mcount_symbols(elf, symtab_idx):
    """Symbol indices in symtab whose name is one of MCOUNT_NAMES."""
    data = elf.data
    sym = elf.sh[symtab_idx]
    strtab = elf.sh[sym[6]]
    so, ss = strtab[4], strtab[5]
    strs = data[so : so + ss]
    offsets = set()
    for nm in MCOUNT_NAMES:
        pat = nm + b"\0"
        p = strs.find(pat)
        while p >= 0:
            offsets.add(p)
            p = strs.find(pat, p + 1)
    if not offsets:
        return set()
    entsize = 24 if elf.is64 else 16
    n = sym[5] // entsize
    raw = array("I")
    raw.frombytes(bytes(data[sym[4] : sym[4] + n * entsize]))
    names = raw[0 :: entsize // 4]
    return {i for i, o in enumerate(names) if o in offsets}


def sites(elf):
    """List of (target section index, r_offset, reloc type) of mcount call relocations."""
    data = elf.data
    out = []
    cache = {}
    for s in elf.sh:
        typ = s[1]
        if typ not in (SHT_RELA, SHT_REL):
            continue
        tgt, link = s[7], s[6]
        if tgt <= 0 or tgt >= len(elf.sh) or not (elf.sh[tgt][2] & SHF_EXECINSTR):
            continue
        if link not in cache:
            cache[link] = _mcount_symbols(elf, link)
        syms = cache[link]
        if not syms:
            continue
        if elf.is64:
            ent = 24 if typ == SHT_RELA else 16
            a = array("Q")
            w = ent // 8
        else:
            ent = 12 if typ == SHT_RELA else 8
            a = array("I")
            w = ent // 4
        n = s[5] // ent
        a.frombytes(bytes(data[s[4] : s[4] + n * ent]))
        offs, infos = a[0::w], a[1::w]
        if elf.is64:
            for off, info in zip(offs, infos, strict=False):
                if (info >> 32) in syms:
                    out.append((tgt, off, info & 0xFFFFFFFF))
        else:
            for off, info in zip(offs, infos, strict=False):
                if (info >> 8) in syms:
                    out.append((tgt, off, info & 0xFF))
    return out


def mcount_loc_places(elf):
    """Where __mcount_loc's entries point, as sorted (section name, offset); None without a table.

    Each entry is resolved through its relocation: the symbol's section and value
    plus the addend (RELA), or plus the word relocated (REL).
    """
    i = elf.index_of(b"__mcount_loc")
    if i < 0:
        return None
    data, loc = elf.data, elf.sh[i]
    rels = [s for s in elf.sh if s[1] in (SHT_RELA, SHT_REL) and s[7] == i]
    out = []
    for s in rels:
        sym = elf.sh[s[6]]
        symsize = 24 if elf.is64 else 16
        fmt = ("<QQq" if s[1] == SHT_RELA else "<QQ") if elf.is64 else ("<IIi" if s[1] == SHT_RELA else "<II")
        for entry in struct.iter_unpack(fmt, bytes(data[s[4] : s[4] + s[5]])):
            r_offset, r_info = entry[0], entry[1]
            index = r_info >> 32 if elf.is64 else r_info >> 8
            if len(entry) == 3:
                addend = entry[2]
            else:
                addend = struct.unpack_from("<i" if not elf.is64 else "<q", data, loc[4] + r_offset)[0]
            at = sym[4] + index * symsize
            if elf.is64:
                _n, _i, _o, shndx, value, _s = struct.unpack_from("<IBBHQQ", data, at)
            else:
                _n, value, _s, _i, _o, shndx = struct.unpack_from("<IIIBBH", data, at)
            if shndx == 0xFFFF:  # SHN_XINDEX: the index is in the .symtab_shndx word of this symbol
                x = next(t for t in elf.sh if t[1] == 18 and t[6] == s[6])
                (shndx,) = struct.unpack_from("<I", data, x[4] + 4 * index)
            out.append((elf.names[shndx].decode(), value + addend))
    return sorted(out)


def mcount_loc(elf):
    """The places of mcount_loc_places() as "section+0xoffset" strings, sorted; None without a table."""
    places = mcount_loc_places(elf)
    return None if places is None else sorted(f"{name}+{offset:#x}" for name, offset in places)


def call_places(elf):
    """Where the live calls to a target start, as sorted (section name, offset): each relocation that names
    one of MCOUNT_NAMES (and has a type: a nop'd entry has neither), less the bytes before its field."""
    table = X86_64_SITE if elf.machine == 62 else I386_SITE
    return sorted((elf.names[t].decode(), off - table.get(ty, (2, 6))[0]) for t, off, ty in sites(elf) if ty)


def loc(path):
    """{relative path: mcount_loc(file)} for every object under path."""
    return {os.path.relpath(f, path): mcount_loc(Elf(read(f))) for f in walk(path)}


def read(path):
    with open(path, "rb") as f:
        return f.read()


def walk(path):
    if os.path.isfile(path):
        yield path
        return
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for fn in sorted(files):
            if fn.endswith((".o", ".ko")):
                yield os.path.join(root, fn)


def count(paths):
    tot = {
        "files": 0,
        "bytes": 0,
        "sites": 0,
        "files_with_sites": 0,
        "files_with_mcount_loc": 0,
        "mcount_loc_entries": 0,
        "by_type": {},
        "errors": 0,
    }
    for p in paths:
        for f in walk(p):
            data = read(f)
            tot["files"] += 1
            tot["bytes"] += len(data)
            try:
                elf = Elf(data)
                ss = sites(elf)
            except Exception as e:  # noqa: BLE001 - report and go on
                tot["errors"] += 1
                print(f"{f}: {e}", file=sys.stderr)
                continue
            tot["sites"] += len(ss)
            tot["files_with_sites"] += bool(ss)
            m = elf.mcount_loc_entries()
            tot["mcount_loc_entries"] += m
            tot["files_with_mcount_loc"] += elf.index_of(b"__mcount_loc") >= 0
            for _, _, t in ss:
                tot["by_type"][str(t)] = tot["by_type"].get(str(t), 0) + 1
    return tot


def pristine_sites(path):
    """{relative path: (is64, machine, [(section name, section index, r_offset, type)])}"""
    res = {}
    base = path if os.path.isdir(path) else os.path.dirname(path)
    for f in walk(path):
        elf = Elf(read(f))
        res[os.path.relpath(f, base)] = (elf.is64, elf.machine, [(elf.names[t], t, o, ty) for t, o, ty in sites(elf)])
    return res


def check(pristine, work_base):
    """Compare processed files in work_base with the pristine site table."""
    tot = {
        "files": 0,
        "files_touched": 0,
        "sites": 0,
        "still_call": 0,
        "changed": 0,
        "unverifiable": 0,
        "mcount_loc_entries": 0,
        "files_with_mcount_loc": 0,
        "unreadable": 0,
    }
    digest = hashlib.sha1()  # every byte of every file
    sdigest = hashlib.sha1()  # ELF header, section headers and section contents only
    tdigest = hashlib.sha1()  # the places __mcount_loc's entries resolve to, whichever symbols they name
    for rel, (_is64, machine, ss) in pristine.items():
        tot["files"] += 1
        f = os.path.join(work_base, rel)
        try:
            data = read(f)
            digest.update(rel.encode() + b"\0" + hashlib.sha1(data).digest())
            elf = Elf(data)
        except Exception:  # noqa: BLE001
            tot["unreadable"] += 1
            continue
        h = hashlib.sha1(data[: 64 if elf.is64 else 52])
        for sh in elf.sh:
            h.update(repr(sh).encode())
            if sh[1] != 8:  # not SHT_NOBITS
                h.update(data[sh[4] : sh[4] + sh[5]])
        sdigest.update(rel.encode() + b"\0" + h.digest())
        tdigest.update(rel.encode() + b"\0" + repr(mcount_loc(elf)).encode())
        tot["mcount_loc_entries"] += elf.mcount_loc_entries()
        tot["files_with_mcount_loc"] += elf.index_of(b"__mcount_loc") >= 0
        table = X86_64_SITE if machine == 62 else I386_SITE
        changed_here = False
        for name, t, off, ty in ss:
            tot["sites"] += 1
            back = table.get(ty)
            if back is None or t >= len(elf.sh) or elf.names[t] != name:
                tot["unverifiable"] += 1
                continue
            pos = elf.sh[t][4] + off - back[0]
            insn = data[pos : pos + back[1]]
            if insn.startswith(CALL_PREFIXES):
                tot["still_call"] += 1
            else:
                tot["changed"] += 1
                changed_here = True
        tot["files_touched"] += changed_here or elf.index_of(b"__mcount_loc") >= 0
    tot["digest"] = digest.hexdigest()[:10]
    tot["sdigest"] = sdigest.hexdigest()[:10]
    tot["tdigest"] = tdigest.hexdigest()[:10]
    return tot


def main(argv):
    if len(argv) >= 2 and argv[0] == "count":
        print(json.dumps(count(argv[1:]), sort_keys=True))
        return 0
    if len(argv) == 2 and argv[0] == "loc":
        json.dump(loc(argv[1]), sys.stdout, sort_keys=True, separators=(",", ":"))
        return 0
    if len(argv) == 3 and argv[0] == "check":
        print(json.dumps(check(pristine_sites(argv[1]), argv[2]), sort_keys=True))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
