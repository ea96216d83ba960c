"""x32 (`-mx32`: ELFCLASS32, EM_X86_64, RELA): objects and linked files, built here from fixtures/prog.c.

This machine's kernel cannot run x32 programs ("Exec format error"), so nothing here runs one. Every build is
checked by its bytes and relocations against readelf and objdump: a scan finds as many sites as the objects have
call relocations against a target, `nop` then `call` gives back the identical file, the nop'd objects link with
bfd and gold (and lld, where lld links x32 at all), and `record` writes the table gcc -mrecord-mcount writes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT, call_places, code_and_relocations, ftpatch, readelf_relocs, run, table_places
from oracles.groundtruth import ground_truth

SITES = 8  # fixtures/prog.c: eight functions, each with one profiling call
CALL_TYPES = {"gotpcrel": "R_X86_64_GOTPCRELX", "rel32": "R_X86_64_PLT32"}
CALL_BYTES = {"gotpcrel": bytes.fromhex("ff1500000000"), "rel32": bytes.fromhex("e800000000")}
# What the default nop (p6) writes: inside a function (mcount) a member that names the call, at its entry
# (__fentry__) the member uftrace patches.
P6 = {
    ("gotpcrel", False): "66 0f 1f 44 00 f2",
    ("rel32", False): "0f 1f 44 00 f1",
    ("gotpcrel", True): "0f 1f 44 00 08 90",
    ("rel32", True): "0f 1f 44 00 08",
}

# name -> (compiler, flags besides -mx32 -O2 -c, the form of its sites, their target).
OBJECTS = {
    "gcc-pie": ("gcc", ["-pg"], "gotpcrel", "mcount"),  # Debian's default PIE: ff 15 through the GOT
    "gcc-fpie": ("gcc", ["-pg", "-fpie"], "gotpcrel", "mcount"),
    "gcc-fpic": ("gcc", ["-pg", "-fpic"], "gotpcrel", "mcount"),
    "gcc-nopie": ("gcc", ["-pg", "-fno-pie"], "rel32", "mcount"),
    "gcc-fentry": ("gcc", ["-pg", "-mfentry"], "gotpcrel", "__fentry__"),
    "gcc-fentry-nopie": ("gcc", ["-pg", "-mfentry", "-fno-pie"], "rel32", "__fentry__"),
    "gcc-record": ("gcc", ["-pg", "-mrecord-mcount"], "gotpcrel", "mcount"),
    "gcc-fentry-record-nopie": ("gcc", ["-pg", "-mfentry", "-mrecord-mcount", "-fno-pie"], "rel32", "__fentry__"),
    "clang-pie": ("clang", ["-pg"], "rel32", "mcount"),  # clang calls mcount with e8 even in PIE code
    "clang-fpic": ("clang", ["-pg", "-fpic"], "rel32", "mcount"),
    "clang-fentry": ("clang", ["-pg", "-mfentry"], "rel32", "__fentry__"),
}
# gcc -mnop-mcount (only without PIC): the nops gcc wrote, known only from __mcount_loc.
NOP_MCOUNT = ["-pg", "-mfentry", "-mnop-mcount", "-mrecord-mcount", "-fno-pie"]

# name -> (object, linker, gcc's link flags). lld 14 links x32 only without PIE (see test_lld_links_x32_only_without_pie).
LINKED = {
    "bfd-nopie": ("gcc-nopie", "bfd", ["-no-pie"]),
    "bfd-nopie-pic-code": ("gcc-pie", "bfd", ["-no-pie"]),
    "bfd-pie": ("gcc-pie", "bfd", ["-pie"]),
    "bfd-fentry-pie": ("gcc-fentry", "bfd", ["-pie"]),
    "bfd-fentry-nopie": ("gcc-fentry-nopie", "bfd", ["-no-pie"]),
    "bfd-static": ("gcc-pie", "bfd", ["-static"]),
    "bfd-static-pie": ("gcc-pie", "bfd", ["-static-pie"]),
    "bfd-shared": ("gcc-fpic", "bfd", ["-shared"]),
    "bfd-record-pie": ("gcc-record", "bfd", ["-pie"]),
    "bfd-clang-pie": ("clang-pie", "bfd", ["-pie"]),
    "bfd-pie-emit-relocs": ("gcc-pie", "bfd", ["-pie", "-Wl,--emit-relocs"]),
    "bfd-static-emit-relocs": ("gcc-pie", "bfd", ["-static", "-Wl,--emit-relocs"]),
    "gold-nopie": ("gcc-nopie", "gold", ["-no-pie"]),
    "gold-pie": ("gcc-pie", "gold", ["-pie"]),
    "gold-fentry-pie": ("gcc-fentry", "gold", ["-pie"]),
    "gold-static": ("gcc-pie", "gold", ["-static"]),
    "gold-shared": ("gcc-fpic", "gold", ["-shared"]),
    "gold-record-pie": ("gcc-record", "gold", ["-pie"]),
    "gold-clang-shared": ("clang-fpic", "gold", ["-shared"]),
    "gold-pie-emit-relocs": ("gcc-pie", "gold", ["-pie", "-Wl,--emit-relocs"]),
    "lld-nopie": ("gcc-nopie", "lld", ["-no-pie"]),
    "lld-nopie-pic-code": ("gcc-pie", "lld", ["-no-pie"]),
    "lld-clang-nopie": ("clang-pie", "lld", ["-no-pie"]),
    "lld-fentry-nopie-emit-relocs": ("gcc-fentry-nopie", "lld", ["-no-pie", "-Wl,--emit-relocs"]),
}
# How each linked file's sites look: the static links relax the GOT call to `67 e8` (addr32 call).
LINKED_FORM = {"bfd-static": "addr32-rel32", "bfd-static-pie": "addr32-rel32", "gold-static": "addr32-rel32"}
LINKED_FORM["bfd-static-emit-relocs"] = "addr32-rel32"


def compile_x32(out: Path, cc: str, flags: list[str]) -> Path:
    run(cc, "-mx32", "-O2", "-c", *flags, FIXTURES / "prog.c", "-o", out)
    return out


def link_x32(out: Path, obj: Path, linker: str, flags: list[str]) -> Path:
    run("gcc", "-mx32", "-pg", f"-fuse-ld={linker}", *flags, obj, "-o", out)
    return out


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("x32-objects")
    built = {name: compile_x32(d / f"{name}.o", cc, flags) for name, (cc, flags, _, _) in OBJECTS.items()}
    built["gcc-nop-mcount"] = compile_x32(d / "gcc-nop-mcount.o", "gcc", NOP_MCOUNT)
    return built


@pytest.fixture(scope="module")
def linked(objects: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("x32-linked")
    built = {name: link_x32(d / name, objects[obj], ld, flags) for name, (obj, ld, flags) in LINKED.items()}
    for name in ("bfd-nopie", "bfd-record-pie", "gold-pie"):
        built[f"{name}-stripped"] = d / f"{name}-stripped"
        shutil.copy(built[name], built[f"{name}-stripped"])
        run("strip", built[f"{name}-stripped"])
    return built


def scanned(path: Path, *options: str) -> dict[str, object]:
    proc = ftpatch("scan", "--json", *options, path)
    assert proc.returncode == 0, proc.stderr
    report: dict[str, object] = json.loads(proc.stdout)["files"][0]
    return report


def sites_of(path: Path) -> list[dict[str, object]]:
    sites: list[dict[str, object]] = scanned(path)["sites"]  # type: ignore[assignment]
    return sites


def section_addresses(path: Path) -> dict[str, int]:
    out = {}
    for line in run("readelf", "-SW", path).splitlines():
        if m := re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+([0-9a-f]+)", line):
            out[m.group(1)] = int(m.group(2), 16)
    return out


def addresses(path: Path) -> set[int]:
    base = section_addresses(path)
    return {base[str(s["section"])] + int(str(s["offset"])) for s in sites_of(path)}


def disassembly_at(path: Path, wanted: set[tuple[str, int]]) -> dict[tuple[str, int], tuple[str, str]]:
    """(section, address) -> (bytes, mnemonic) of the instructions objdump -d shows at the wanted places."""
    found, section = {}, ""
    for line in run("objdump", "-d", path).splitlines():
        if m := re.match(r"^Disassembly of section (\S+):", line):
            section = m.group(1)
        elif (m := re.match(r"^\s*([0-9a-f]+):\t([0-9a-f ]+?)\s*\t(\S+)", line)) and (
            place := (section, int(m.group(1), 16))
        ) in wanted:
            found[place] = (m.group(2), m.group(3))
    return found


def places(path: Path) -> set[tuple[str, int]]:
    """(section, address) of each site the scan finds: in an object, the address is the offset."""
    base = section_addresses(path)
    return {(str(s["section"]), base[str(s["section"])] + int(str(s["offset"]))) for s in sites_of(path)}


def target_relocations(path: Path) -> list[tuple[str, int, str, str]]:
    """The relocations readelf prints against mcount or __fentry__ in code: not a GOT slot's, not __mcount_loc's."""
    return [
        r for r in readelf_relocs(path) if r[3] in ("mcount", "_mcount", "__fentry__") and r[0].startswith(".rela.text")
    ]


# Objects


@pytest.mark.parametrize("name", OBJECTS)
def test_object_sites_are_its_call_relocations(objects: dict[str, Path], name: str) -> None:
    obj = objects[name]
    _, _, form, target = OBJECTS[name]
    header = run("readelf", "-hW", obj)
    assert re.search(r"Class:\s+ELF32", header) and re.search(r"Machine:\s+Advanced Micro Devices X86-64", header)
    report = scanned(obj)
    assert report["machine"] == "x32"
    sites = sites_of(obj)
    relocs = target_relocations(obj)
    assert len(sites) == len(relocs) == SITES
    assert {r[2] for r in relocs} == {CALL_TYPES[form]} and {r[3] for r in relocs} == {target}
    # Each site starts where its relocation's field starts, less the opcode: e8 (1 byte) or ff 15 (2).
    opcode = len(CALL_BYTES[form]) - 4
    assert sorted((r[0].removeprefix(".rela"), r[1] - opcode) for r in relocs) == sorted(
        (str(s["section"]), int(str(s["offset"]))) for s in sites
    )
    assert [(str(s["section"]), int(str(s["offset"]))) for s in sites] == call_places(obj)
    assert {(s["form"], s["target"], s["state"]) for s in sites} == {(form, target, "call")}
    data = obj.read_bytes()
    assert {data[int(str(s["file_offset"])) : int(str(s["file_offset"])) + len(CALL_BYTES[form])] for s in sites} == {
        CALL_BYTES[form]
    }


@pytest.mark.parametrize("style", ["p6", "o16", "jmp"])
@pytest.mark.parametrize("name", OBJECTS)
def test_object_nop_then_call_is_the_same_file(objects: dict[str, Path], name: str, style: str, tmp: Path) -> None:
    obj, nopped, back = objects[name], tmp / "nopped.o", tmp / "back.o"
    _, _, form, target = OBJECTS[name]
    proc = ftpatch("nop", "--nop", style, obj, "-o", nopped)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{obj} -> {nopped}: {SITES} patched, 0 already nop, 0 filtered out\n"
    sites = sites_of(nopped)
    assert len(sites) == SITES and {s["state"] for s in sites} == {"nop"}
    # No relocation names the target any more; each site's entry is an R_X86_64_NONE at the same r_offset.
    assert target_relocations(nopped) == []
    none = sorted(r[1] for r in readelf_relocs(nopped) if r[2] == "R_X86_64_NONE")
    assert none == sorted(r[1] for r in target_relocations(obj))
    if style == "p6":
        entry = target == "__fentry__"
        data = nopped.read_bytes()
        length = len(CALL_BYTES[form])
        written = {data[int(str(s["file_offset"])) : int(str(s["file_offset"])) + length].hex(" ") for s in sites}
        assert written == {P6[(form, entry)]}
    # objdump decodes a nop at every site (the p6, o16 and jmp members alike begin with one instruction there).
    shown = disassembly_at(nopped, places(nopped))
    assert len(shown) == SITES
    assert {mnemonic for _, mnemonic in shown.values()} <= {"nopl", "nopw", "data16", "jmp"}

    proc = ftpatch("call", nopped, "-o", back)
    assert proc.returncode == 0, proc.stderr
    assert back.read_bytes() == obj.read_bytes()


def test_nop_mcount_object_is_found_through_its_table(objects: dict[str, Path]) -> None:
    obj = objects["gcc-nop-mcount"]
    sites = sites_of(obj)
    assert len(sites) == SITES == len(table_places(obj) or [])
    assert {(s["form"], s["state"]) for s in sites} == {("mcount-loc", "nop")}
    assert [(str(s["section"]), int(str(s["offset"]))) for s in sites] == table_places(obj)
    assert target_relocations(obj) == []
    data = obj.read_bytes()
    assert {data[int(str(s["file_offset"])) : int(str(s["file_offset"])) + 5] for s in sites} == {
        bytes.fromhex("0f1f440000")
    }


def test_lea_is_refused_on_x32(objects: dict[str, Path], tmp: Path) -> None:
    proc = ftpatch("nop", "--nop", "lea", objects["gcc-pie"], "-o", tmp / "lea.o")
    assert proc.returncode == 1
    assert "nop style lea is not a nop on x32, whose code is x86-64, choose one of p6, o16, jmp" in proc.stderr
    assert not (tmp / "lea.o").exists()


# name of the object -> how it links: the flags its code allows.
LINKS_OF = {
    "gcc-pie": ["-pie"],
    "gcc-fpic": ["-shared"],
    "gcc-nopie": ["-no-pie"],
    "gcc-fentry": ["-pie"],
    "gcc-fentry-nopie": ["-no-pie"],
    "gcc-record": ["-pie"],
    "clang-pie": ["-pie"],
    "clang-fentry": ["-pie"],
}


@pytest.mark.parametrize("linker", ["bfd", "gold"])
@pytest.mark.parametrize("name", LINKS_OF)
def test_nopped_object_links(objects: dict[str, Path], name: str, linker: str, tmp: Path) -> None:
    nopped, out = tmp / "nopped.o", tmp / "linked"
    assert ftpatch("nop", objects[name], "-o", nopped).returncode == 0
    link_x32(out, nopped, linker, LINKS_OF[name])
    # Nothing in the linked file calls a target, or has a slot or a stub for one.
    assert ground_truth(out).sites == []
    assert not [r for r in readelf_relocs(out) if r[3] in ("mcount", "__fentry__")]


@pytest.mark.parametrize("name", ["gcc-nopie", "gcc-pie", "clang-pie", "gcc-fentry-nopie"])
def test_nopped_object_links_with_lld_without_pie(objects: dict[str, Path], name: str, tmp: Path) -> None:
    nopped, out = tmp / "nopped.o", tmp / "linked"
    assert ftpatch("nop", objects[name], "-o", nopped).returncode == 0
    link_x32(out, nopped, "lld", ["-no-pie"])
    assert ground_truth(out).sites == []


def test_lld_links_x32_only_without_pie(objects: dict[str, Path], tmp: Path) -> None:
    """lld 14 links an x32 -no-pie program, and refuses x32 PIE, -shared and -static: why LINKED has no such
    lld build (docs/facts.md)."""
    link_x32(tmp / "nopie", objects["gcc-pie"], "lld", ["-no-pie"])
    for flags, says in (
        (["-pie"], "cannot preempt symbol: __dso_handle"),
        (["-shared"], "relocation R_X86_64_32 cannot be used against symbol '__dso_handle'"),
        (["-static"], "R_X86_64_GOTTPOFF must be used in MOVQ or ADDQ instructions only"),
    ):
        obj = objects["gcc-fpic" if flags == ["-shared"] else "gcc-pie"]
        proc = subprocess.run(
            ["gcc", "-mx32", "-pg", "-fuse-ld=lld", *flags, obj, "-o", tmp / "out"], capture_output=True, text=True
        )
        assert proc.returncode != 0 and says in proc.stderr, (flags, proc.stderr)


# The record the 32-bit r_addend keeps: 8 bits of the target's name hash


def test_targets_sharing_the_8_bits_of_a_record_are_refused_clearly(tmp: Path) -> None:
    """mcount and hook24 share the low 8 bits of their CRC-32 (0x58): a nop'd x32 entry could name either."""
    (tmp / "a.c").write_text("int a1(int x) { return x + 1; }\n")
    (tmp / "b.c").write_text("int b1(int x) { return x * 2; }\n")
    run("gcc", "-mx32", "-O2", "-pg", "-c", tmp / "a.c", "-o", tmp / "a.o")
    run("gcc", "-mx32", "-O2", "-pg", "-mfentry", "-mfentry-name=hook24", "-c", tmp / "b.c", "-o", tmp / "b.o")
    run("ld", "-r", "-m", "elf32_x86_64", tmp / "a.o", tmp / "b.o", "-o", tmp / "ab.o")
    both = tmp / "ab.o"
    before = both.read_bytes()
    assert [s["target"] for s in sites_of_with(both, "--symbol", "hook24")] == ["mcount", "hook24"]

    proc = ftpatch("nop", "--symbol", "hook24", both, "-o", tmp / "out.o")
    assert proc.returncode == 1
    assert proc.stderr == (
        f"ftpatch: error: {both}: a1 (.text+0x3): the record a nop'd entry keeps in x32's 32-bit r_addend holds "
        "8 bits of the target's name hash, and mcount and hook24 have the same 8 (0x58): `call` could not tell "
        "which of them the site called (and 1 more sites); nothing was written\n"
    )
    assert not (tmp / "out.o").exists() and both.read_bytes() == before

    # Without hook24 as a target, its call is no site: mcount's nop names mcount alone, and comes back.
    assert ftpatch("nop", both, "-o", tmp / "nopped.o").returncode == 0
    proc = ftpatch("call", "--symbol", "hook24", tmp / "nopped.o", "-o", tmp / "back.o")
    assert proc.returncode == 3
    assert "its record's 8 bits of a name's hash (0x58) fit more than one target: hook24, mcount" in proc.stderr
    assert ftpatch("call", tmp / "nopped.o", "-o", tmp / "back.o").returncode == 0
    assert (tmp / "back.o").read_bytes() == before


def sites_of_with(path: Path, *options: str) -> list[dict[str, object]]:
    sites: list[dict[str, object]] = scanned(path, *options)["sites"]  # type: ignore[assignment]
    return sites


def test_a_nopped_entry_holds_its_record_in_32_bits(objects: dict[str, Path], tmp: Path) -> None:
    """ "FT", the type (R_X86_64_GOTPCRELX, 0x29) and the low 8 bits of CRC-32("mcount") (0x58)."""
    assert ftpatch("nop", objects["gcc-pie"], "-o", tmp / "nopped.o").returncode == 0
    lines = [line for line in run("readelf", "-rW", tmp / "nopped.o").splitlines() if "R_X86_64_NONE" in line]
    assert len(lines) == SITES
    assert {line.split()[-1] for line in lines} == {"46542958"}


# Linked files


@pytest.mark.parametrize("name", [*LINKED, "bfd-nopie-stripped", "bfd-record-pie-stripped", "gold-pie-stripped"])
def test_linked_sites_are_the_objects_call_sites(
    objects: dict[str, Path], linked: dict[str, Path], name: str, tmp: Path
) -> None:
    exe = linked[name]
    source = name.removesuffix("-stripped")
    obj, _, _ = LINKED[source]
    _, _, form, target = OBJECTS[obj]
    sites = sites_of(exe)
    assert scanned(exe)["machine"] == "x32"
    # As many sites as the object has call relocations against a target, where objdump sees the calls.
    assert len(sites) == len(target_relocations(objects[obj])) == SITES
    assert {(s["form"], s["target"], s["state"]) for s in sites} == {(LINKED_FORM.get(source, form), target, "call")}
    reference = linked[source] if name.endswith("-stripped") else None
    assert addresses(exe) == ground_truth(exe, reference).addresses
    if "emit-relocs" in name:
        assert scanned(exe)["located"] == "emit-relocs"
        assert len(target_relocations(exe)) == SITES
    if "record" in name:
        assert scanned(exe)["located"] == "mcount-loc"
        # gcc's .quad entries are relocated in a PIE by R_X86_64_RELATIVE64, bfd's and gold's alike.
        relative64 = [r for r in readelf_relocs(exe) if r[2] == "R_X86_64_RELATIVE64"]
        assert len(relative64) == SITES


@pytest.mark.parametrize("name", [*LINKED, "bfd-nopie-stripped", "bfd-record-pie-stripped", "gold-pie-stripped"])
def test_linked_nop_then_call_is_the_same_file(linked: dict[str, Path], name: str, tmp: Path) -> None:
    exe, nopped, back = linked[name], tmp / "nopped", tmp / "back"
    proc = ftpatch("nop", exe, "-o", nopped)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{exe} -> {nopped}: {SITES} patched, 0 already nop, 0 filtered out\n"
    at = addresses(exe)
    assert {s["state"] for s in sites_of(nopped)} == {"nop"} and addresses(nopped) == at
    assert ground_truth(nopped, linked[name.removesuffix("-stripped")]).sites == []
    shown = disassembly_at(nopped, places(nopped))
    assert len(shown) == SITES and {mnemonic for _, mnemonic in shown.values()} <= {"nopl", "nopw"}
    proc = ftpatch("call", nopped, "-o", back)
    assert proc.returncode == 0, proc.stderr
    assert back.read_bytes() == exe.read_bytes()


# Retargeting (`call --target`): checked by objdump and readelf, as nothing x32 runs here


HOOK = "profile_hook"  # examples/hook/hook.c's


def hook_object(tmp: Path, cc: str = "gcc") -> Path:
    hook = tmp / "hook.o"
    flags = ["-O2", "-fPIC", "-mgeneral-regs-only", "-c"]
    run(cc, "-mx32", *flags, ROOT / "examples" / "hook" / "hook.c", "-o", hook)
    return hook


def direct_calls_to(path: Path, name: str) -> set[int]:
    """The addresses of the calls objdump shows to `name` itself (`call`, `addr32 call`)."""
    return {
        int(m.group(1), 16)
        for line in run("objdump", "-d", "--no-show-raw-insn", path).splitlines()
        if (m := re.match(rf"\s*([0-9a-f]+):\s+(?:addr32 )?call\S*\s+[0-9a-f]+ <{name}>$", line))
    }


@pytest.mark.parametrize("name", OBJECTS)
def test_object_retarget_keeps_each_site_s_relocation_type(objects: dict[str, Path], name: str, tmp: Path) -> None:
    """Each site's entry names the hook with the type it had (a GOTPCRELX stays one, for the linker to relax);
    nop'd and pointed at the hook again, the same file; pointed back at its target, objdump -dr of the original."""
    obj, hooked, nopped, again, back = objects[name], tmp / "h.o", tmp / "n.o", tmp / "a.o", tmp / "b.o"
    _, _, form, target = OBJECTS[name]
    proc = ftpatch("call", "--target", HOOK, obj, "-o", hooked)
    assert proc.returncode == 0 and proc.stdout.endswith(f": {SITES} patched, 0 already call, 0 filtered out\n"), (
        proc.stdout + proc.stderr
    )
    before = sorted(r[1] for r in target_relocations(obj))
    to_hook = [r for r in readelf_relocs(hooked) if r[3] == HOOK]
    assert sorted(r[1] for r in to_hook) == before and {r[2] for r in to_hook} == {CALL_TYPES[form]}
    assert target_relocations(hooked) == []
    assert ftpatch("nop", "--symbol", HOOK, hooked, "-o", nopped).returncode == 0
    assert target_relocations(nopped) == [] and not [r for r in readelf_relocs(nopped) if r[3] == HOOK]
    assert ftpatch("call", "--target", HOOK, nopped, "-o", again).returncode == 0
    assert again.read_bytes() == hooked.read_bytes()
    for source in (hooked, nopped):
        assert ftpatch("call", "--target", target, "--symbol", HOOK, source, "-o", back).returncode == 0
        assert code_and_relocations(back) == code_and_relocations(obj)


# bfd, gold and lld (lld without PIE only), PIE and not, static: what the linked hook's callers look like.
RETARGETED = ["bfd-nopie", "bfd-pie", "bfd-fentry-pie", "bfd-static", "bfd-clang-pie", "gold-pie", "lld-nopie"]


@pytest.mark.parametrize("name", RETARGETED)
def test_retargeted_objects_and_programs_call_the_hook(objects: dict[str, Path], name: str, tmp: Path) -> None:
    """The objects retargeted then linked with the hook, and the program linked with it then retargeted: objdump
    finds a direct call to the hook at every site of the original (a GOT call relaxed or rewritten as `addr32
    call`), and nowhere else; `--target <the original>` gives the program back byte for byte."""
    obj_name, linker, flags = LINKED[name]
    _, _, _, target = OBJECTS[obj_name]
    hook = hook_object(tmp)
    exe, hooked, back = tmp / "prog", tmp / "prog-hooked", tmp / "prog-back"
    run("gcc", "-mx32", "-pg", f"-fuse-ld={linker}", *flags, objects[obj_name], hook, "-o", exe)
    sites = ground_truth(exe).addresses
    assert len(sites) == SITES and direct_calls_to(exe, HOOK) == set()
    proc = ftpatch("call", "--target", HOOK, exe, "-o", hooked)
    assert proc.returncode == 0 and f": {SITES} patched, 0 already" in proc.stdout, proc.stdout + proc.stderr
    assert direct_calls_to(hooked, HOOK) == sites
    assert ftpatch("call", "--target", target, "--symbol", HOOK, hooked, "-o", back).returncode == 0
    assert back.read_bytes() == exe.read_bytes()

    hooked_obj, from_objects = tmp / "prog-hooked.o", tmp / "prog-from-objects"
    assert ftpatch("call", "--target", HOOK, objects[obj_name], "-o", hooked_obj).returncode == 0
    run("gcc", "-mx32", "-pg", f"-fuse-ld={linker}", *flags, hooked_obj, hook, "-o", from_objects)
    assert len(direct_calls_to(from_objects, HOOK)) == SITES
    assert ground_truth(from_objects).sites == []  # nothing calls mcount or __fentry__ any more


# Recording


RECORDED = ["gcc-pie", "gcc-nopie", "gcc-fentry", "gcc-fentry-nopie", "clang-pie", "clang-fentry"]


@pytest.mark.parametrize("name", RECORDED)
def test_record_writes_gcc_s_table(objects: dict[str, Path], name: str, tmp: Path) -> None:
    obj, recorded = objects[name], tmp / "recorded.o"
    proc = ftpatch("record", obj, "-o", recorded)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout == f"{obj} -> {recorded}: {SITES} sites recorded in __mcount_loc\n"
    assert table_places(recorded) == call_places(obj)
    cc, flags, _, _ = OBJECTS[name]
    if cc == "gcc":  # the same places as gcc's own -mrecord-mcount table
        assert table_places(recorded) == table_places(compile_x32(tmp / "gcc.o", cc, [*flags, "-mrecord-mcount"]))
    # 8-byte entries, each relocated by an R_X86_64_64 in a 12-byte Elf32_Rela, as gcc writes them.
    sections = {
        m.group(1): (int(m.group(2), 16), int(m.group(3), 16))
        for line in run("readelf", "-SW", recorded).splitlines()
        if (m := re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+[0-9a-f]+\s+[0-9a-f]+\s+([0-9a-f]+)\s+([0-9a-f]+)", line))
    }
    assert sections["__mcount_loc"] == (8 * SITES, 8)
    assert sections[".rela__mcount_loc"] == (12 * SITES, 12)
    table = [r for r in readelf_relocs(recorded) if r[0] == ".rela__mcount_loc"]
    assert [r[1] for r in table] == list(range(0, 8 * SITES, 8))
    assert {r[2] for r in table} == {"R_X86_64_64"}


@pytest.mark.parametrize("linker", ["bfd", "gold"])
@pytest.mark.parametrize("name", ["gcc-pie", "clang-pie", "gcc-fentry-nopie"])
def test_recorded_object_links_and_its_table_lists_the_sites(
    objects: dict[str, Path], name: str, linker: str, tmp: Path
) -> None:
    recorded, exe, stripped = tmp / "recorded.o", tmp / "exe", tmp / "stripped"
    assert ftpatch("record", objects[name], "-o", recorded).returncode == 0
    link_x32(exe, recorded, linker, ["-no-pie"] if name.endswith("nopie") else ["-pie"])
    shutil.copy(exe, stripped)
    run("strip", stripped)
    for path in (exe, stripped):
        report = scanned(path)
        assert report["located"] == "mcount-loc"
        assert addresses(path) == ground_truth(exe).addresses and len(addresses(path)) == SITES
    nopped, back = tmp / "nopped", tmp / "back"
    assert ftpatch("nop", stripped, "-o", nopped).returncode == 0
    assert ftpatch("call", nopped, "-o", back).returncode == 0
    assert back.read_bytes() == stripped.read_bytes()
