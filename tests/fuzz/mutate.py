"""Structure-aware mutations of the committed fixtures, and one driver that checks every outcome.

A mutation is a small plain tuple, (kind, *numbers), so that hypothesis can
shrink it and the long run can print it. `mutate` applies a list of them to a
fixture's bytes; `drive` runs the library and the command line on the result
and raises AssertionError on anything that is neither success nor an
FtpatchError naming the file.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import struct
from pathlib import Path

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = sorted([*(ROOT / "fixtures").glob("*.o"), *(ROOT / "fixtures").glob("*-prog")])
SEEDS = {p.name: p.read_bytes() for p in FIXTURES}

# ELF header fields, by class: (name, offset, size). The program header fields matter to linked files.
_EHDR = {
    1: [("e_type", 16, 2), ("e_machine", 18, 2), ("e_shoff", 32, 4), ("e_shentsize", 46, 2),
        ("e_shnum", 48, 2), ("e_shstrndx", 50, 2), ("ei_class", 4, 1), ("ei_data", 5, 1),
        ("e_phoff", 28, 4), ("e_phentsize", 42, 2), ("e_phnum", 44, 2)],
    2: [("e_type", 16, 2), ("e_machine", 18, 2), ("e_shoff", 40, 8), ("e_shentsize", 58, 2),
        ("e_shnum", 60, 2), ("e_shstrndx", 62, 2), ("ei_class", 4, 1), ("ei_data", 5, 1),
        ("e_phoff", 32, 8), ("e_phentsize", 54, 2), ("e_phnum", 56, 2)],
}  # fmt: skip
# Section header fields: (name, offset, size), by class.
_SHDR = {
    1: [("sh_name", 0, 4), ("sh_type", 4, 4), ("sh_flags", 8, 4), ("sh_offset", 16, 4), ("sh_size", 20, 4),
        ("sh_link", 24, 4), ("sh_info", 28, 4), ("sh_entsize", 36, 4)],
    2: [("sh_name", 0, 4), ("sh_type", 4, 4), ("sh_flags", 8, 8), ("sh_offset", 24, 8), ("sh_size", 32, 8),
        ("sh_link", 40, 4), ("sh_info", 44, 4), ("sh_entsize", 56, 8)],
}  # fmt: skip
KINDS = ("xindex", "flip", "truncate", "ehdr", "shdr", "overlap", "reloc_offset", "reloc_sym", "byte", "symbol")
SHT_SYMTAB, SHT_RELA, SHT_REL = 2, 4, 9


def _layout(data: bytes | bytearray) -> tuple[int, int, int, int] | None:
    """(class, e_shoff, e_shnum, shentsize) if the header still makes sense, else None."""
    if len(data) < 64 or data[4] not in (1, 2):
        return None
    if data[4] == 2:
        shoff, shentsize, shnum = struct.unpack_from("<Q", data, 40)[0], 64, struct.unpack_from("<H", data, 60)[0]
    else:
        shoff, shentsize, shnum = struct.unpack_from("<I", data, 32)[0], 40, struct.unpack_from("<H", data, 48)[0]
    if shnum == 0 or shoff + shnum * shentsize > len(data):
        return None
    return data[4], shoff, shnum, shentsize


def _put(data: bytearray, offset: int, size: int, value: int) -> None:
    if 0 <= offset and offset + size <= len(data):
        data[offset : offset + size] = (value % (1 << (8 * size))).to_bytes(size, "little")


def _get(data: bytearray, offset: int, size: int) -> int:
    return int.from_bytes(data[offset : offset + size], "little")


def _interesting(choice: int, size: int, data_len: int, noise: int) -> int:
    top = (1 << (8 * size)) - 1
    values = [0, 1, 2, 3, 0xFF, 0xFF00, 0xFFFF, data_len, data_len + 1, data_len - 1, top, top >> 1, noise]
    return values[choice % len(values)] & top


def _sections(data: bytearray, type_: int | None = None) -> list[int]:
    lay = _layout(data)
    if lay is None:
        return []
    _cls, shoff, shnum, size = lay
    out = []
    for i in range(shnum):
        base = shoff + i * size
        if type_ is None or _get(data, base + 4, 4) in ((type_,) if type_ != SHT_RELA else (SHT_RELA, SHT_REL)):
            out.append(base)
    return out


def _shdr_field(data: bytearray, base: int, name: str) -> int:
    cls = data[4]
    field = next(f for f in _SHDR[cls] if f[0] == name)
    return _get(data, base + field[1], field[2])


def apply_one(data: bytearray, mutation: tuple[int, ...], kind: str) -> None:
    """Apply one mutation in place; a mutation that no longer fits the file does nothing."""
    a, b, c = mutation
    n = len(data)
    if kind == "flip" and n:
        data[a % n] ^= 1 << (b % 8)
    elif kind == "byte" and n:
        data[a % n] = b % 256
    elif kind == "truncate" and n:
        del data[a % n :]
    elif kind == "ehdr" and n >= 64 and data[4] in _EHDR:
        name, off, size = _EHDR[data[4]][a % len(_EHDR[data[4]])]
        _put(data, off, size, _interesting(b, size, n, c))
    elif kind == "xindex":
        # Extended numbering, as for 65,280+ sections: the counts move into section 0.
        lay = _layout(data)
        if lay is not None:
            cls, shoff, shnum, _size = lay
            fields = dict((f[0], f[1:]) for f in _EHDR[cls])
            shstrndx = _get(data, *fields["e_shstrndx"])
            _put(data, shoff + _SHDR[cls][4][1], _SHDR[cls][4][2], shnum)  # sh_size
            _put(data, shoff + _SHDR[cls][5][1], 4, shstrndx)  # sh_link
            _put(data, *fields["e_shnum"], 0)
            _put(data, *fields["e_shstrndx"], 0xFFFF)
    elif kind == "shdr":
        bases = _sections(data)
        if bases:
            name, off, size = _SHDR[data[4]][b % len(_SHDR[data[4]])]
            _put(data, bases[a % len(bases)] + off, size, _interesting(c, size, n, c * 7919))
    elif kind == "overlap":
        bases = _sections(data)
        if len(bases) > 1:
            x, y = bases[a % len(bases)], bases[b % len(bases)]
            for name in ("sh_offset", "sh_size") if c % 2 else ("sh_offset",):
                _, off, size = next(f for f in _SHDR[data[4]] if f[0] == name)
                _put(data, x + off, size, _get(data, y + off, size) + (c % 16) - 8 * (c % 3 == 0))
    elif kind in ("reloc_offset", "reloc_sym"):
        rels = _sections(data, SHT_RELA)
        if not rels:
            return
        base = rels[a % len(rels)]
        offset, size, entsize = (_shdr_field(data, base, f) for f in ("sh_offset", "sh_size", "sh_entsize"))
        if not entsize or offset + size > n or size < entsize:
            return
        entry = offset + (b % (size // entsize)) * entsize
        word = 8 if data[4] == 2 else 4
        if kind == "reloc_offset":
            # An r_offset near or past the end of the section it applies to.
            info = _shdr_field(data, base, "sh_info")
            target = _sections(data)[info] if info < len(_sections(data)) else None
            target_size = _shdr_field(data, target, "sh_size") if target is not None else 0
            _put(data, entry, word, target_size - 6 + (c % 12) if c % 4 else c)
        else:
            info = _get(data, entry + word, word)
            shift = 32 if word == 8 else 8
            _put(data, entry + word, word, (info & ((1 << shift) - 1)) | ((c % 70000) << shift))
    elif kind == "symbol":
        syms = _sections(data, SHT_SYMTAB)
        if syms:
            offset, size = _shdr_field(data, syms[0], "sh_offset"), _shdr_field(data, syms[0], "sh_size")
            entsize = 24 if data[4] == 2 else 16
            if size >= entsize and offset + size <= n:
                entry = offset + (a % (size // entsize)) * entsize
                # st_name, st_shndx, st_value (or st_info) get interesting values.
                field = [
                    (0, 4),
                    (6 if data[4] == 2 else 14, 2),
                    (8 if data[4] == 2 else 4, 4),
                    (4 if data[4] == 2 else 12, 1),
                ][b % 4]
                _put(data, entry + field[0], field[1], _interesting(c, field[1], n, c))


def mutate(seed: str, mutations: list[tuple[str, int, int, int]]) -> bytes:
    data = bytearray(SEEDS[seed])
    for kind, a, b, c in mutations:
        apply_one(data, (a, b, c), kind)
    return bytes(data)


def random_mutations(rng: random.Random) -> tuple[str, list[tuple[str, int, int, int]]]:
    seed = rng.choice(sorted(SEEDS))
    muts = [
        (rng.choice(KINDS), rng.randrange(1 << 20), rng.randrange(1 << 20), rng.randrange(1 << 32))
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 5)))
    ]
    return seed, muts


class Hang(Exception):
    """An input took longer than the time cap."""


def _alarm(signum: int, frame: object) -> None:
    raise Hang()


@contextlib.contextmanager
def time_cap(seconds: float):
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def drive(data: bytes, workdir: Path) -> str:
    """Run every entry point on `data`; return the outcome kind ("ok" or the error class and its first words).

    Raises AssertionError when ftpatch breaks a guarantee: an exception that is
    not an FtpatchError, a message not naming the file, a changed input, an
    internal-error exit code, or a stray temporary file.
    """
    import ftpatch

    path = workdir / "in.o"
    out = workdir / "out.o"
    path.write_bytes(data)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    outcome = "ok"

    def check_error(e: ftpatch.FtpatchError) -> None:
        nonlocal outcome
        assert str(e).startswith(f"{path}: ") or str(e).startswith(f"{out}: "), str(e)
        assert e.detail and "\n" not in str(e), repr(str(e))
        if outcome == "ok":
            outcome = f"{type(e).__name__}: {_kind(e.detail)}"

    try:
        result = ftpatch.scan(str(path))
    except ftpatch.FtpatchError as e:
        check_error(e)
        result = None
    if result is not None:
        for action in ftpatch.Action:
            try:
                p = ftpatch.plan(result, action)
                ftpatch.apply(result.data, p)
            except ftpatch.FtpatchError as e:
                check_error(e)
    try:
        ftpatch.patch_file(str(path), ftpatch.Action.CALL, output=str(out))
    except ftpatch.FtpatchError as e:
        check_error(e)
    assert path.read_bytes() == data, "input changed"
    for argv in (
        ["scan", "--json", str(path)],
        ["nop", str(path), "-o", str(out)],
        ["record", str(path), "-o", str(out)],
    ):
        code, _stdout, stderr = run_cli(argv)
        assert code in (0, 1, 3), (argv, code, stderr)
        for line in stderr.splitlines():
            assert any(
                line.startswith(f"ftpatch: {kind}: {name}: ") for kind in ("error", "warning") for name in (path, out)
            ), line
    # In place last: on failure the input is unchanged, mtime included; on success it is a whole new file.
    code, _stdout, stderr = run_cli(["nop", "--in-place", str(path)])
    assert code in (0, 1, 3), (code, stderr)
    if code:
        assert path.read_bytes() == data and path.stat().st_mtime_ns == 1_000_000_000, "failed --in-place changed input"
    leftovers = [p.name for p in workdir.iterdir() if p.name not in ("in.o", "out.o")]
    assert not leftovers, leftovers
    return outcome


def _kind(detail: str) -> str:
    """An error's detail without its numbers, names and bytes, for counting outcomes by kind."""
    if "): " in detail:  # "fib (.text+0xcd): expected ...": drop the site
        detail = detail.split("): ", 1)[1]
    words = []
    for word in detail.replace(",", " ").split():
        if word.startswith("("):
            break
        if any(ch.isdigit() for ch in word) or word[0] in ".[_\\" or "_" in word or ":" in word or len(words) >= 5:
            continue
        words.append(word)
    return " ".join(words[:5])
