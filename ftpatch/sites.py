"""The site model both scanners build: sites kept as columns in SiteGroups, one ScanResult a file.

A site is where a profiling call is or was: its bytes, the exact call they
must be, and in an object the relocation entry that makes them that call.
objects.py builds these from relocations, linked.py from call targets; patch.py
plans over them without knowing which scanner made them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from itertools import compress
from operator import attrgetter

from .demangle import demangle, names
from .elf import SHT_RELA, Section
from .x86 import Arch, Form, nops

DEFAULT_TARGETS = ("mcount", "_mcount", "__fentry__")
# Called after the prologue, not as a function's first instruction.
MCOUNT_TARGETS = frozenset({"mcount", "_mcount"})


def at_entry(target: str | None) -> bool:
    """Whether calls to `target` are a function's first instruction (__fentry__, a --symbol), not after its prologue."""
    return target is not None and target not in MCOUNT_TARGETS


class State(StrEnum):
    CALL = "call"
    NOP = "nop"
    OTHER = "other"  # neither the expected call nor a known nop: verification fails on it


def site_state(code: bytes, call: bytes | None, arch: Arch) -> State:
    """The one rule for what a site holds: its call, a known nop, or neither."""
    return State.CALL if code == call else State.NOP if code in nops(len(code), arch) else State.OTHER


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

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def entry(self) -> bool:
        return at_entry(self.target)

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

    def subset(self, keep: Sequence[bool]) -> SiteGroup:
        """The sites for which `keep` is true."""
        columns = (self.sections, self.starts, self.codes, self.calls, self.rels, self.indices)
        sections, starts, codes, calls, rels, indices = (tuple(compress(c, keep)) for c in columns)
        return SiteGroup(
            self.form,
            self.target,
            sections,
            starts,
            codes,
            calls,
            rels,
            indices,
            self.held,
            self.call_entry,
            self.nop_entry,
            self.tag,
        )

    def site(self, i: int, function: str | None, arch: Arch) -> Site:
        section, start, code, call = self.sections[i], self.starts[i], self.codes[i], self.calls[i]
        reloc = None
        if self.rels:
            rel, index = self.rels[i], self.indices[i]
            info_offset = (
                rel.sh_offset + index * rel.sh_entsize + rel.sh_entsize // (3 if rel.sh_type == SHT_RELA else 2)
            )
            reloc = Reloc(rel.name, index, info_offset, self.held, self.call_entry, self.nop_entry, self.tag)
        return Site(
            function,
            section.name,
            start,
            section.sh_offset + start,
            self.form,
            self.target,
            site_state(code, call, arch),
            code,
            call,
            reloc,
        )


def _no_function(section: Section, offset: int) -> str | None:
    return None


# The live profiling calls left in some bytes, by address, each described. A linked file's scanner
# finds its sites one way (function by function); this finds calls another (every call encoding
# in the code, by its bytes), so that `nop` can prove no call was left behind.
LiveCalls = Callable[[bytes], dict[int, str]]


@dataclass(frozen=True)
class ScanResult:
    path: str
    type: str
    arch: Arch
    data: bytes
    groups: tuple[SiteGroup, ...]
    base: int = 0  # where this ELF file starts in the file read: an archive member's offset
    # What makes `call` refuse the file: nop'd sites it cannot restore exactly, each said once. Looked for
    # only when asked (ScanResult.strays): `nop` needs none of it.
    find_strays: Callable[[], tuple[str, ...]] = field(default=tuple, repr=False, compare=False)
    # Profiling calls found in the code but not at a site: `nop` refuses to leave them live.
    unclassified: tuple[str, ...] = ()
    # Why nop'd sites of this (linked) file cannot be found; `call` refuses it. "" when they can.
    blind: str = ""
    # Why ftpatch cannot tell this file's profiling calls from other calls, or why it holds none that
    # patching would change (a slim LTO object); every action refuses it.
    opaque: str = ""
    # The name of the function holding a place (section, offset), if the file tells.
    function_at: Callable[[Section, int], str | None] = field(default=_no_function, repr=False, compare=False)
    # The live profiling calls left in patched bytes, by address, where the file needs this check.
    live_calls: LiveCalls | None = field(default=None, repr=False, compare=False)
    # Of these sites of a group (by position), those `call` would not restore exactly, were these nop
    # bytes written over them.
    readback: Callable[[SiteGroup, bytes, Sequence[int]], list[int]] | None = field(
        default=None, repr=False, compare=False
    )
    # What the user must know although the file can be patched (a fat LTO object); every action says it.
    warnings: tuple[str, ...] = ()

    @property
    def machine(self) -> str:
        return self.arch.name

    @cached_property
    def strays(self) -> tuple[str, ...]:
        return self.find_strays()

    @cached_property
    def sites(self) -> tuple[Site, ...]:
        """Every site, in file order."""
        sites = [
            group.site(i, self.function_at(section, start), self.arch)
            for group in self.groups
            for i, (section, start) in enumerate(zip(group.sections, group.starts, strict=True))
        ]
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
