"""The nops of mcount, _mcount and __fentry__ sites are the bytes 0.2.0 wrote, whatever the -finstrument-functions
hooks added.

Objects nop'd by an earlier ftpatch, fixtures and `call`'s reading of a nop back depend on these bytes, and on what
each nop says (its style, place, form and tag). The tables below are literals, printed once from the code of main
at 66bbfee, before __cyg_profile_func_enter/exit became targets: a change to them is a change of the on-disk format.
The hook slot (x86.NopStyle) may change only the nops of __cyg_profile_* sites.
"""

from __future__ import annotations

from ftpatch.sites import DEFAULT_TARGETS, slot
from ftpatch.x86 import I386, NOP_STYLES, SLOTS, X86_64, Arch, Form, known_nops

# (style, form, at a function's entry, tag) -> what `nop` writes. Main wrote a tail jmp's nop in linked files only,
# whose nops carry no tag: an i386 object's e9 site was refused (exit 3), so tags 1 and 2 of tail-rel32 are new.
NOPS = {
    ("p6", "rel32", True, 0): "0f1f440008",
    ("p6", "rel32", True, 1): "0f1f440108",
    ("p6", "rel32", True, 2): "0f1f440208",
    ("p6", "rel32", False, 0): "0f1f4400f1",
    ("p6", "rel32", False, 1): "0f1f4401f1",
    ("p6", "rel32", False, 2): "0f1f4402f1",
    ("p6", "gotpcrel", True, 0): "0f1f44000890",
    ("p6", "gotpcrel", True, 1): "0f1f44010890",
    ("p6", "gotpcrel", True, 2): "0f1f44020890",
    ("p6", "gotpcrel", False, 0): "660f1f4400f2",
    ("p6", "gotpcrel", False, 1): "660f1f4401f2",
    ("p6", "gotpcrel", False, 2): "660f1f4402f2",
    ("p6", "got-ebx", True, 0): "0f1f44000890",
    ("p6", "got-ebx", True, 1): "0f1f44010890",
    ("p6", "got-ebx", True, 2): "0f1f44020890",
    ("p6", "got-ebx", False, 0): "660f1f4400f3",
    ("p6", "got-ebx", False, 1): "660f1f4401f3",
    ("p6", "got-ebx", False, 2): "660f1f4402f3",
    ("p6", "addr32-rel32", True, 0): "0f1f44000890",
    ("p6", "addr32-rel32", True, 1): "0f1f44010890",
    ("p6", "addr32-rel32", True, 2): "0f1f44020890",
    ("p6", "addr32-rel32", False, 0): "660f1f4400f4",
    ("p6", "addr32-rel32", False, 1): "660f1f4401f4",
    ("p6", "addr32-rel32", False, 2): "660f1f4402f4",
    ("p6", "tail-rel32", True, 0): "c3ccccccf1",
    ("p6", "tail-rel32", False, 0): "c3ccccccf1",
    ("o16", "rel32", True, 0): "6666666690",
    ("o16", "rel32", True, 1): "2e66666690",
    ("o16", "rel32", True, 2): "3e66666690",
    ("o16", "rel32", False, 0): "6666666690",
    ("o16", "rel32", False, 1): "2e66666690",
    ("o16", "rel32", False, 2): "3e66666690",
    ("o16", "gotpcrel", True, 0): "666666666690",
    ("o16", "gotpcrel", True, 1): "2e6666666690",
    ("o16", "gotpcrel", True, 2): "3e6666666690",
    ("o16", "gotpcrel", False, 0): "666666666690",
    ("o16", "gotpcrel", False, 1): "2e6666666690",
    ("o16", "gotpcrel", False, 2): "3e6666666690",
    ("o16", "got-ebx", True, 0): "666666666690",
    ("o16", "got-ebx", True, 1): "2e6666666690",
    ("o16", "got-ebx", True, 2): "3e6666666690",
    ("o16", "got-ebx", False, 0): "666666666690",
    ("o16", "got-ebx", False, 1): "2e6666666690",
    ("o16", "got-ebx", False, 2): "3e6666666690",
    ("o16", "addr32-rel32", True, 0): "666666666690",
    ("o16", "addr32-rel32", True, 1): "2e6666666690",
    ("o16", "addr32-rel32", True, 2): "3e6666666690",
    ("o16", "addr32-rel32", False, 0): "666666666690",
    ("o16", "addr32-rel32", False, 1): "2e6666666690",
    ("o16", "addr32-rel32", False, 2): "3e6666666690",
    ("o16", "tail-rel32", True, 0): "c3ccccccf1",
    ("o16", "tail-rel32", False, 0): "c3ccccccf1",
    ("jmp", "rel32", True, 0): "eb03cccccc",
    ("jmp", "rel32", True, 1): "eb03cccccd",
    ("jmp", "rel32", True, 2): "eb03ccccce",
    ("jmp", "rel32", False, 0): "eb03cccccc",
    ("jmp", "rel32", False, 1): "eb03cccccd",
    ("jmp", "rel32", False, 2): "eb03ccccce",
    ("jmp", "gotpcrel", True, 0): "eb04cccccccc",
    ("jmp", "gotpcrel", True, 1): "eb04cccccccd",
    ("jmp", "gotpcrel", True, 2): "eb04ccccccce",
    ("jmp", "gotpcrel", False, 0): "eb04cccccccc",
    ("jmp", "gotpcrel", False, 1): "eb04cccccccd",
    ("jmp", "gotpcrel", False, 2): "eb04ccccccce",
    ("jmp", "got-ebx", True, 0): "eb04cccccccc",
    ("jmp", "got-ebx", True, 1): "eb04cccccccd",
    ("jmp", "got-ebx", True, 2): "eb04ccccccce",
    ("jmp", "got-ebx", False, 0): "eb04cccccccc",
    ("jmp", "got-ebx", False, 1): "eb04cccccccd",
    ("jmp", "got-ebx", False, 2): "eb04ccccccce",
    ("jmp", "addr32-rel32", True, 0): "eb04cccccccc",
    ("jmp", "addr32-rel32", True, 1): "eb04cccccccd",
    ("jmp", "addr32-rel32", True, 2): "eb04ccccccce",
    ("jmp", "addr32-rel32", False, 0): "eb04cccccccc",
    ("jmp", "addr32-rel32", False, 1): "eb04cccccccd",
    ("jmp", "addr32-rel32", False, 2): "eb04ccccccce",
    ("jmp", "tail-rel32", True, 0): "c3ccccccf1",
    ("jmp", "tail-rel32", False, 0): "c3ccccccf1",
    ("lea", "rel32", True, 0): "3e8d742600",
    ("lea", "rel32", True, 1): "3e8d746600",
    ("lea", "rel32", True, 2): "3e8d74a600",
    ("lea", "rel32", False, 0): "2e8d742600",
    ("lea", "rel32", False, 1): "2e8d746600",
    ("lea", "rel32", False, 2): "2e8d74a600",
    ("lea", "gotpcrel", True, 0): "8db600000000",
    ("lea", "gotpcrel", True, 1): "",
    ("lea", "gotpcrel", True, 2): "",
    ("lea", "gotpcrel", False, 0): "66268d742600",
    ("lea", "gotpcrel", False, 1): "66268d746600",
    ("lea", "gotpcrel", False, 2): "66268d74a600",
    ("lea", "got-ebx", True, 0): "8db600000000",
    ("lea", "got-ebx", True, 1): "",
    ("lea", "got-ebx", True, 2): "",
    ("lea", "got-ebx", False, 0): "66268d742600",
    ("lea", "got-ebx", False, 1): "66268d746600",
    ("lea", "got-ebx", False, 2): "66268d74a600",
    ("lea", "addr32-rel32", True, 0): "8db600000000",
    ("lea", "addr32-rel32", True, 1): "",
    ("lea", "addr32-rel32", True, 2): "",
    ("lea", "addr32-rel32", False, 0): "66368d742600",
    ("lea", "addr32-rel32", False, 1): "66368d746600",
    ("lea", "addr32-rel32", False, 2): "66368d74a600",
    ("lea", "tail-rel32", True, 0): "c3ccccccf1",
    ("lea", "tail-rel32", False, 0): "c3ccccccf1",
}
KNOWN_X86_64 = {
    "0f1f440000": ("p6", None, None, 0, True),
    "0f1f440008": ("p6", True, None, 0, True),
    "0f1f44000890": ("p6", True, None, 0, True),
    "0f1f4400f1": ("p6", False, "rel32", 0, False),
    "0f1f440108": ("p6", True, None, 1, False),
    "0f1f44010890": ("p6", True, None, 1, False),
    "0f1f4401f1": ("p6", False, "rel32", 1, False),
    "0f1f440208": ("p6", True, None, 2, False),
    "0f1f44020890": ("p6", True, None, 2, False),
    "0f1f4402f1": ("p6", False, "rel32", 2, False),
    "2e6666666690": ("o16", None, None, 1, False),
    "2e66666690": ("o16", None, None, 1, False),
    "3e6666666690": ("o16", None, None, 2, False),
    "3e66666690": ("o16", None, None, 2, False),
    "660f1f440000": ("p6", None, None, 0, True),
    "660f1f4400f2": ("p6", False, "gotpcrel", 0, False),
    "660f1f4400f4": ("p6", False, "addr32-rel32", 0, False),
    "660f1f4401f2": ("p6", False, "gotpcrel", 1, False),
    "660f1f4401f4": ("p6", False, "addr32-rel32", 1, False),
    "660f1f4402f2": ("p6", False, "gotpcrel", 2, False),
    "660f1f4402f4": ("p6", False, "addr32-rel32", 2, False),
    "666666666690": ("o16", None, None, 0, False),
    "6666666690": ("o16", None, None, 0, False),
    "c3ccccccf1": ("ret", False, "tail-rel32", 0, False),
    "eb03cccccc": ("jmp", None, None, 0, False),
    "eb03cccccd": ("jmp", None, None, 1, False),
    "eb03ccccce": ("jmp", None, None, 2, False),
    "eb04cccccccc": ("jmp", None, None, 0, False),
    "eb04cccccccd": ("jmp", None, None, 1, False),
    "eb04ccccccce": ("jmp", None, None, 2, False),
}
KNOWN_I386 = {
    "0f1f440000": ("p6", None, None, 0, True),
    "0f1f440008": ("p6", True, None, 0, True),
    "0f1f44000890": ("p6", True, None, 0, True),
    "0f1f4400f1": ("p6", False, "rel32", 0, False),
    "0f1f440108": ("p6", True, None, 1, False),
    "0f1f44010890": ("p6", True, None, 1, False),
    "0f1f4401f1": ("p6", False, "rel32", 1, False),
    "0f1f440208": ("p6", True, None, 2, False),
    "0f1f44020890": ("p6", True, None, 2, False),
    "0f1f4402f1": ("p6", False, "rel32", 2, False),
    "2e6666666690": ("o16", None, None, 1, False),
    "2e66666690": ("o16", None, None, 1, False),
    "2e8d742600": ("lea", False, "rel32", 0, False),
    "2e8d746600": ("lea", False, "rel32", 1, False),
    "2e8d74a600": ("lea", False, "rel32", 2, False),
    "3e6666666690": ("o16", None, None, 2, False),
    "3e66666690": ("o16", None, None, 2, False),
    "3e8d742600": ("lea", True, None, 0, True),
    "3e8d746600": ("lea", True, None, 1, False),
    "3e8d74a600": ("lea", True, None, 2, False),
    "660f1f440000": ("p6", None, None, 0, True),
    "660f1f4400f3": ("p6", False, "got-ebx", 0, False),
    "660f1f4400f4": ("p6", False, "addr32-rel32", 0, False),
    "660f1f4401f3": ("p6", False, "got-ebx", 1, False),
    "660f1f4401f4": ("p6", False, "addr32-rel32", 1, False),
    "660f1f4402f3": ("p6", False, "got-ebx", 2, False),
    "660f1f4402f4": ("p6", False, "addr32-rel32", 2, False),
    "66268d742600": ("lea", False, "got-ebx", 0, False),
    "66268d746600": ("lea", False, "got-ebx", 1, False),
    "66268d74a600": ("lea", False, "got-ebx", 2, False),
    "66368d742600": ("lea", False, "addr32-rel32", 0, False),
    "66368d746600": ("lea", False, "addr32-rel32", 1, False),
    "66368d74a600": ("lea", False, "addr32-rel32", 2, False),
    "666666666690": ("o16", None, None, 0, False),
    "6666666690": ("o16", None, None, 0, False),
    "8db600000000": ("lea", True, None, 0, True),
    "c3ccccccf1": ("ret", False, "tail-rel32", 0, False),
    "eb03cccccc": ("jmp", None, None, 0, False),
    "eb03cccccd": ("jmp", None, None, 1, False),
    "eb03ccccce": ("jmp", None, None, 2, False),
    "eb04cccccccc": ("jmp", None, None, 0, False),
    "eb04cccccccd": ("jmp", None, None, 1, False),
    "eb04ccccccce": ("jmp", None, None, 2, False),
}

# The pairs of a 6-byte and a 5-byte nop that ftpatch knows, one the other's first or last five bytes, in main. A
# new pair would make a nop'd site read back as both lengths: the branch's first hook slots for lea (es and ss
# 5-byte leas, 26 8d 74 26 00 inside 66 26 8d 74 26 00) made every lea'd got-ebx site of an i386 PIC object a
# stray, the 17 failures that reverted it.
OVERLAPS = {
    ("660f1f440000", "0f1f440000"),
    ("0f1f44000890", "0f1f440008"),
    ("0f1f44010890", "0f1f440108"),
    ("0f1f44020890", "0f1f440208"),
    ("666666666690", "6666666690"),
    ("2e6666666690", "6666666690"),
    ("3e6666666690", "6666666690"),
}


def test_default_targets_get_the_nops_main_wrote() -> None:
    assert all(slot(target) == 0 for target in DEFAULT_TARGETS if not target.startswith("__cyg_profile_"))
    wrote = {
        (name, form, entry, tag): NOP_STYLES[name].nop(Form(form), entry, tag, slot=0).hex()
        for name, form, entry, tag in NOPS
    }
    assert wrote == NOPS


def test_every_nop_main_knew_says_what_it_said() -> None:
    for arch, table in ((X86_64, KNOWN_X86_64), (I386, KNOWN_I386)):
        known = known_nops(arch)
        said = {}
        for code in table:
            nop = known.get(bytes.fromhex(code))
            if nop is not None:
                assert nop.slot == 0, (arch.name, code)
                said[code] = (nop.style, nop.entry, None if nop.form is None else nop.form.value, nop.tag, nop.padding)
        assert said == table, arch.name


def _overlaps(arch: Arch) -> set[tuple[str, str]]:
    known = known_nops(arch)
    fives = {code for code in known if len(code) == 5}
    return {
        (code.hex(), part.hex()) for code in known if len(code) == 6 for part in (code[:5], code[1:]) if part in fives
    }


def test_hook_nops_hold_no_other_nop_and_no_other_nop_holds_them() -> None:
    assert _overlaps(X86_64) == OVERLAPS
    assert _overlaps(I386) == OVERLAPS


def test_hook_nops_differ_from_mcounts_and_say_their_slot() -> None:
    for arch in (X86_64, I386):
        known = known_nops(arch)
        for name, style in NOP_STYLES.items():
            if not style.x86_64 and arch.x86_64:
                continue
            for form in (Form.REL32, arch.pic_form, Form.TAIL):
                for tag in (0, 1, 2) if not arch.rela else (0,):
                    plain = style.nop(form, False, tag)
                    for s in SLOTS:
                        hook = style.nop(form, False, tag, s)
                        assert hook and hook != plain, (arch.name, name, form, tag, s)
                        assert known[hook].slot == s and known[hook].tag == tag, (arch.name, name, form, tag, s)
                        assert style.nop(form, True, tag, s) == b""  # the hooks are called inside a function
