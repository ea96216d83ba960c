"""The site model both scanners build: sites kept as columns in SiteGroups, one ScanResult a file.

A site is where a profiling call is or was: its bytes, the exact call they
must be, and in an object the relocation entry that makes them that call.
objects.py builds these from relocations, linked.py from call targets; patch.py
plans over them without knowing which scanner made them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from itertools import compress, groupby
from operator import attrgetter, itemgetter

from .demangle import demangle, names
from .elf import SHT_RELA, Section
from .errors import InputError, naming
from .x86 import LONG_PATCHABLE_NOPS, OPCODES, Arch, Form, nops

CYG_ENTER, CYG_EXIT = "__cyg_profile_func_enter", "__cyg_profile_func_exit"  # -finstrument-functions
DEFAULT_TARGETS = ("mcount", "_mcount", "__fentry__", CYG_ENTER, CYG_EXIT)
# Called inside a function, not as its first instruction: mcount after the prologue, the enter hook after its
# arguments are set, the exit hook before each return (docs/facts.md).
INSIDE_TARGETS = frozenset({"mcount", "_mcount", CYG_ENTER, CYG_EXIT})
# Which target a nop inside a function says it replaced, where a function calls more than one (x86.NopStyle):
# 0 for the one target of its kind, mcount's.
_SLOTS = {CYG_ENTER: 1, CYG_EXIT: 2}
# The -finstrument-functions hooks, which __mcount_loc never lists: the kernel and uftrace read it as the table of
# mcount and __fentry__ calls, and gcc -mrecord-mcount lists only those (record.py, linked.py).
HOOK_TARGETS = frozenset(_SLOTS)


def at_entry(target: str | None) -> bool | None:
    """Whether calls to `target` are a function's first instruction (__fentry__: True) or inside it (mcount and
    _mcount after the prologue, the -finstrument-functions hooks: False). Any other name (a --symbol, a
    --target) says neither: a site of it is where it is, as a call that `call --target` pointed at a hook stays
    where the compiler put it."""
    if target is None:
        return None
    return target not in INSIDE_TARGETS if target in DEFAULT_TARGETS else None


def slot(target: str | None) -> int:
    """What a nop says of the target it replaced: 1 for __cyg_profile_func_enter, 2 for
    __cyg_profile_func_exit, which the same functions call, and 0 for any other."""
    return _SLOTS.get(target or "", 0)


class State(StrEnum):
    CALL = "call"
    NOP = "nop"
    OTHER = "other"  # neither the expected call nor a known nop: verification fails on it


def site_state(code: bytes, call: bytes | None, arch: Arch) -> State:
    """The one rule for what a site holds: its call, a known nop, or neither. A -fpatchable-function-entry
    site may hold a compiler's nop longer than a call (x86.LONG_PATCHABLE_NOPS): a nop too, though not one of
    known_nops, the nops the scans search code for, since by itself it marks no site."""
    if code == call:
        return State.CALL
    return State.NOP if code in nops(len(code), arch) or code in LONG_PATCHABLE_NOPS else State.OTHER


def called_elsewhere(site: Site) -> str:
    """What to add to the error of a site that holds a call of another function: a `call --target` made it."""
    calls = any(site.code.startswith(op) for op in OPCODES.values())
    return (
        "; it calls another function: if `call --target NAME` pointed it there, name it with --symbol NAME"
        if calls
        else ""
    )


@dataclass(frozen=True)
class Reloc:
    """The relocation entry of a site: where its r_info (and r_addend) lie, and the values they take."""

    section: str
    index: int
    info_offset: int  # file offset of r_info; on RELA r_addend follows it
    held: bytes  # r_info (and r_addend) as found
    call: bytes  # what makes the site a live call
    nop: bytes  # what ftpatch's nop leaves there
    tag: int  # what an i386 object's nop says of the relocation type


@dataclass(frozen=True)
class Site:
    function: str | None
    section: str
    offset: int
    file_offset: int
    form: Form
    target: str | None  # None for a RECORDED site, which never called anything
    state: State
    code: bytes  # the bytes found at the site
    call: bytes | None  # the exact call these bytes must be; None for a RECORDED site
    reloc: Reloc | None

    @property
    def length(self) -> int:
        return len(self.code)

    @property
    def where(self) -> str:
        """The site for a message: its function named as scan shows it (demangled), and its place."""
        place = f"{self.section}+{self.offset:#x}"
        return f"{demangle(self.function)} ({place})" if self.function else place

    def to_json(self) -> dict[str, object]:
        return {
            "function": self.function,
            "demangled": demangle(self.function) if self.function is not None else None,
            "section": self.section,
            "offset": self.offset,
            "file_offset": self.file_offset,
            "length": self.length,
            "form": self.form.value,
            "target": self.target,
            "state": self.state.value,
        }


@dataclass(frozen=True)
class SiteGroup:
    """Sites that share their form, their target and, in an object, what their relocation
    entries hold (so their symbol and type) and hold for a call and for a nop.

    Everything else is a column, one value a site: its section, its offset there,
    the bytes found, the call it must hold, its relocation entry. An object's
    20,000 sites are one or two groups, however many sections and relocation
    tables hold them, so verifying and patching them are passes over columns;
    a Site object for each is made only when one is asked for (ScanResult.sites).
    """

    form: Form
    target: str | None  # None for RECORDED sites
    sections: tuple[Section, ...]  # each site's section
    starts: tuple[int, ...]  # each site's offset in its section
    codes: tuple[bytes, ...]  # the bytes found at each site
    calls: tuple[bytes | None, ...]  # the exact call each site must hold; None for RECORDED sites
    rels: tuple[Section, ...] = ()  # each site's SHT_REL or SHT_RELA section; none in a linked file
    indices: tuple[int, ...] = ()  # each site's entry in its relocation section
    # The entry after r_offset, r_info and on RELA r_addend: what every entry holds now, what it holds for
    # a live call, and what ftpatch's nop leaves (type NONE, symbol 0, and on RELA a record of the call).
    held: bytes = b""
    call_entry: bytes = b""
    nop_entry: bytes = b""
    tag: int = 0  # what an i386 object's nop says of the relocation type (x86.NopStyle)
    entry: bool = False  # the sites are at their functions' entries (__fentry__'s place), not after a prologue
    # Why `call` without --target cannot tell which call these nops replaced ("" where it can): more than one
    # target of their kind is in the file (a --symbol or --target added one), and the nops do not say which.
    doubt: str = ""
    # At a -fpatchable-function-entry site that a call now fills: what `nop` writes back, whatever the style (the
    # compiler's nop an object's record keeps, a linked file's one fixed nop); b"" where the object has no record
    # (gold's -r dropped it, or an i386 nop with no REL record: nopped.REL_PATCHABLE_AT), and `nop` refuses.
    # None elsewhere.
    compiler_nop: bytes | None = None

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def slot(self) -> int:
        return slot(self.target)

    def file_offsets(self, base: int = 0) -> list[int]:
        """The file offset of each site; `base` is added."""
        sections, starts = self.sections, self.starts
        if sections and sections.count(sections[0]) == len(sections):  # one section: the usual case
            first = base + sections[0].sh_offset
            return [first + start for start in starts]
        return [base + section.sh_offset + start for section, start in zip(sections, starts, strict=True)]

    def info_offsets(self, base: int = 0) -> list[int]:
        """The file offset of each site's r_info, its entry's second word; `base` is added."""
        rel = self.rels[0]
        rels, indices, word = self.rels, self.indices, base + rel.sh_entsize // (3 if rel.sh_type == SHT_RELA else 2)
        if rels.count(rels[0]) == len(rels):  # one relocation table: the usual case
            first, entsize = word + rels[0].sh_offset, rels[0].sh_entsize
            return [first + index * entsize for index in indices]
        return [word + rel.sh_offset + index * rel.sh_entsize for rel, index in zip(rels, indices, strict=True)]

    def pairs(self) -> Mapping[tuple[bytes, bytes | None], Sequence[int]]:
        """The positions of the sites holding each distinct (bytes held, call expected) pair."""
        codes, calls = self.codes, self.calls
        # An object's group expects one call of every site, and usually finds it at all of them.
        if codes and codes.count(codes[0]) == len(codes) and calls.count(calls[0]) == len(calls):
            return {(codes[0], calls[0]): range(len(codes))}
        at: dict[tuple[bytes, bytes | None], list[int]] = {}
        for i, pair in enumerate(zip(codes, calls, strict=True)):
            at.setdefault(pair, []).append(i)
        return at

    def wrong(self, arch: Arch) -> list[int]:
        """The positions of the sites that hold neither their call nor a known nop, in order."""
        return sorted(
            i for (code, call), at in self.pairs().items() if site_state(code, call, arch) is State.OTHER for i in at
        )

    def subset(self, keep: Sequence[bool]) -> SiteGroup:
        """The sites for which `keep` is true."""
        return SiteGroup(
            self.form,
            self.target,
            tuple(compress(self.sections, keep)),
            tuple(compress(self.starts, keep)),
            tuple(compress(self.codes, keep)),
            tuple(compress(self.calls, keep)),
            tuple(compress(self.rels, keep)),
            tuple(compress(self.indices, keep)),
            self.held,
            self.call_entry,
            self.nop_entry,
            self.tag,
            self.entry,
            self.doubt,
            self.compiler_nop,
        )

    def site(self, i: int, function: str | None, arch: Arch) -> Site:
        return self.sites([i], [function], arch)[0]

    def sites(self, positions: Sequence[int], functions: Sequence[str | None], arch: Arch) -> list[Site]:
        """The Site of each position, `functions` naming their functions.

        Made in bulk, for `scan`'s 50,000-row tables: each distinct (bytes, call) pair is judged once, and
        each Site and Reloc is filled in without the frozen dataclass's __init__, whose object.__setattr__
        per field costs more than the rest of making a site (the same objects, equal and hashed alike)."""
        states: dict[tuple[bytes, bytes | None], State] = {}
        form, target, held, call_entry, nop_entry, tag = (
            self.form,
            self.target,
            self.held,
            self.call_entry,
            self.nop_entry,
            self.tag,
        )
        new, site_new, reloc_new = object.__new__, Site, Reloc
        out = []
        for i, function in zip(positions, functions, strict=True):
            section, start, code, call = self.sections[i], self.starts[i], self.codes[i], self.calls[i]
            reloc = None
            if self.rels:
                rel, index = self.rels[i], self.indices[i]
                entsize = rel.sh_entsize
                reloc = new(reloc_new)
                reloc.__dict__.update(
                    section=rel.name,
                    index=index,
                    info_offset=rel.sh_offset + index * entsize + entsize // (3 if rel.sh_type == SHT_RELA else 2),
                    held=held,
                    call=call_entry,
                    nop=nop_entry,
                    tag=tag,
                )
            site = new(site_new)
            site.__dict__.update(
                function=function,
                section=section.name,
                offset=start,
                file_offset=section.sh_offset + start,
                form=form,
                target=target,
                state=states.get((code, call)) or states.setdefault((code, call), site_state(code, call, arch)),
                code=code,
                call=call,
                reloc=reloc,
            )
            out.append(site)
        return out


class Action(StrEnum):
    NOP = "nop"
    CALL = "call"


@dataclass(frozen=True)
class Finding:
    """What a scan concluded about a file besides its sites, decided once: a sentence that follows the
    file's name, and the actions it stops.

    `scan` reports a finding that stops `nop` as an error, and one that stops only `call`, or
    nothing, as a warning; `nop` warns of one that stops only `call` when it nops a site.
    """

    text: str
    stops: frozenset[Action] = frozenset()

    @property
    def error(self) -> bool:
        return Action.NOP in self.stops


class Located(StrEnum):
    """Where a file's sites were found: the one strategy its scan used, chosen from what the file holds."""

    RELOCATIONS = "relocations"  # an object: its relocation entries against a target
    MCOUNT_LOC = "mcount-loc"  # a linked file's __mcount_loc table (gcc -mrecord-mcount, ftpatch record)
    PATCHABLE = "patchable-function-entries"  # a linked file's __patchable_function_entries, and nothing else
    EMIT_RELOCS = "emit-relocs"  # relocations against a target that ld --emit-relocs kept
    FUNCTIONS = "functions"  # each function decoded from its entry (.symtab, .dynsym, unwind tables)
    SWEEP = "sweep"  # a linear decode of the code: nothing says where a function starts
    NOWHERE = "nowhere"  # no target is reached, or the file is refused: no site to look for


# Why a site inside the function `call --target` names is not pointed at it (objects and linked files alike).
RECURSIVE = "is in {name} itself, whose call to {name} would recurse forever; leave it out with --except {name}"


@dataclass(frozen=True)
class Redirect:
    """What pointing a group's sites at another function makes of them, decided once per group: each site's
    new call, and in an object the entry that makes it that call."""

    calls: tuple[bytes | None, ...]  # by position; None where the site cannot call it (`refused` says why)
    call_entry: bytes = b""  # an object's: r_info (and r_addend) naming the function, with the site's type
    refused: Mapping[int, str] = field(default_factory=dict)  # position -> why, a sentence after the site


class Checks:
    """The questions about a scanned file that need its bytes again, asked by `plan` and `apply`.

    One for objects (objects.ObjectChecks) and one for linked files
    (linked.LinkedChecks); this base answers for a file with nothing to
    check. A result keeps its checks, and so does every plan made from it,
    one per ELF image, so none is lost when results are combined. They read
    bytes and raise errors that name no file: `plan`, `apply` and
    ScanResult.strays name them; a caller of its own wraps them in
    errors.naming(result.path).
    """

    def function_at(self, section: Section, offset: int) -> str | None:
        """The name of the function holding a place, if the file tells."""
        return None

    def functions_at(self, section: Section, offsets: Sequence[int]) -> list[str | None]:
        """function_at of each of these places of one section."""
        return [self.function_at(section, offset) for offset in offsets]

    def strays(self) -> tuple[str, ...]:
        """What makes `call` refuse the file: nop'd sites it cannot restore exactly, each said once.
        Looked for only when asked: `nop` needs none of it."""
        return ()

    def readback(self, group: SiteGroup, new: bytes, positions: Sequence[int]) -> list[int]:
        """Of these sites of a group (by position), those `call` would not restore exactly, were `new`
        written over them."""
        return []

    def clash(self, group: SiteGroup) -> str:
        """Why `call` could not restore a nop'd site of this group whatever the nop ('' if it could): the
        sentence `nop` refuses with, where readback found such sites."""
        return ""

    def live_calls(self, data: bytes | bytearray) -> Mapping[int, str]:
        """Every live profiling call in the file's bytes `data`, found independently of the sites:
        file offset of the call's end -> what it is. `apply` runs it on the new bytes."""
        return {}

    def redirect(self, group: SiteGroup, name: str) -> Redirect:
        """The calls to `name` these sites would become (`call --target`); raises InputError, naming no file,
        if the file cannot call `name` at all."""
        raise InputError("", f"{name}: no site here can call it")


@dataclass(frozen=True)
class ScanResult:
    """What a scan of one ELF image found: its sites, how they were found, and what it concluded."""

    path: str
    type: str
    arch: Arch
    data: bytes
    groups: tuple[SiteGroup, ...]
    located: Located
    findings: tuple[Finding, ...] = ()
    checks: Checks = field(default_factory=Checks, repr=False, compare=False)
    base: int = 0  # where this ELF file starts in the file read: an archive member's offset

    @property
    def machine(self) -> str:
        return self.arch.name

    @cached_property
    def strays(self) -> tuple[str, ...]:
        with naming(self.path):  # they are found by reading the bytes again, whose errors name no file
            return self.checks.strays()

    def stopping(self, action: Action) -> list[Finding]:
        """The findings that stop `action` on this file."""
        return [f for f in self.findings if action in f.stops]

    @property
    def warnings(self) -> tuple[str, ...]:
        """What the user must know although every action works (a fat LTO object)."""
        return tuple(f.text for f in self.findings if not f.stops)

    def function_at(self, section: Section, offset: int) -> str | None:
        return self.checks.function_at(section, offset)

    def site(self, group: SiteGroup, i: int) -> Site:
        return group.site(i, self.function_at(group.sections[i], group.starts[i]), self.arch)

    @cached_property
    def sites(self) -> tuple[Site, ...]:
        """Every site, in file order."""
        sites = []
        for group in self.groups:
            functions: list[str | None] = []
            # A section at a time: its functions are named in one call.
            for section, run in groupby(zip(group.sections, group.starts, strict=True), key=itemgetter(0)):
                functions += self.checks.functions_at(section, [start for _, start in run])
            sites += group.sites(range(len(group)), functions, self.arch)
        sites.sort(key=attrgetter("file_offset"))
        return tuple(sites)


def matching(function: str | None, globs: Sequence[str]) -> list[str]:
    """The globs that match `function` by its symbol, its demangled name or that name without parameters."""
    if not globs:
        return []
    forms = names(function or "")
    return [g for g in globs if any(fnmatch.fnmatchcase(name, g) for name in forms)]


def chosen(
    function: str | None, only: Sequence[str] = (), exclude: Sequence[str] = (), matched: set[str] | None = None
) -> bool:
    """Whether --only / --except globs keep a site of `function`; the globs that match it go into `matched`,
    so that a run can say which glob matched no function at all."""
    selecting, excluding = matching(function, only), matching(function, exclude)
    if matched is not None:
        matched.update(selecting, excluding)
    return (not only or bool(selecting)) and not excluding
