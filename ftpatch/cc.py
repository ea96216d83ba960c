"""ftpatch-cc: a compiler launcher that nops the profiling calls of each object it compiles.

`ftpatch-cc COMPILER ARGS...` runs the command as given. When the command compiles
objects (`-c`, with `-o FILE` or the compiler's default names) and succeeds, each
object is nop'd in place, as `ftpatch nop --in-place` does, with the options in
FTPATCH_CC_FLAGS. Every other command (preprocessing, dependency output, assembly
output, linking, version and help queries, `-o /dev/null`, `-o -`) is exec'd and
never sees ftpatch again. The second front end beside cli.py: it prints and exits
itself. A pass-through imports nothing of the library: a build starts it for every
compile and ccache for every preprocessing run, so its start is Python's alone.
"""

from __future__ import annotations

import os
import signal
import stat
import sys

USAGE = """usage: ftpatch-cc COMPILER [ARGS...]

Run COMPILER ARGS as given; if it compiled objects (-c) and succeeded, nop the
profiling calls of each object in place, as `ftpatch nop --in-place` does.
Options for that nop come from FTPATCH_CC_FLAGS (for example
FTPATCH_CC_FLAGS="--no-fsync --only 'hot_*'"): --only GLOB, --except GLOB,
--symbol NAME, --nop STYLE, --no-fsync, --record. If the nop fails, the object is
removed and the error printed; the exit status is then ftpatch's (1 or 3)."""

# Options of gcc and clang whose argument is the next word, so that word is neither an input nor an option.
_SEPARATE = frozenset(
    "-o -x -MF -MT -MQ -include -imacros -idirafter -iprefix -iwithprefix -iwithprefixbefore -isystem -isysroot "
    "-iquote -imultilib -iframework -cxx-isystem -ivfsoverlay -include-pch -I -L -l -D -U -A -T -u -e -z -B "
    "-Xlinker -Xassembler -Xpreprocessor -Xclang -mllvm -aux-info --param -dumpbase -dumpbase-ext -dumpdir "
    "-wrapper -target -arch -F -framework -serialize-diagnostics -MJ --sysroot -working-directory -resource-dir "
    "--output".split()
)
# Options after which the compiler writes no object, whatever else is given: it stops before assembling
# (-E, -S, -M, -MM, -fsyntax-only, --analyze), does a dry run (-###), or answers a question and exits
# (--version even with -c compiles nothing, measured with gcc 12 and clang 14).
_NO_OBJECT = frozenset(
    "-E -S -M -MM -fsyntax-only --analyze -### --preprocess --assemble --version --help --target-help "
    "-dumpversion -dumpfullversion -dumpmachine -dumpspecs".split()
)
_NO_OBJECT_PREFIXES = ("-print-", "--print-", "--help=")
# The suffixes gcc and clang compile to an object under -c (gcc's default_compilers); any other input
# (objects, archives, unknown suffixes) is a linker input, which -c ignores.
_SOURCES = frozenset(
    ".c .i .cc .cp .cxx .cpp .CPP .c++ .C .ii .m .mi .mm .M .mii .s .S .sx .f .for .ftn .F .FOR .FTN .fpp .FPP "
    ".f90 .f95 .f03 .f08 .F90 .F95 .F03 .F08 .d .go .cu".split()
)
_RESPONSE_DEPTH = 2000  # libiberty's expandargv gives up after as many nested @files


class Options:
    """What FTPATCH_CC_FLAGS asks of each nop. A plain class: dataclasses would import inspect, a tenth of
    a pass-through's start."""

    __slots__ = ("exclude", "fsync", "nop", "only", "record", "symbols")

    def __init__(
        self,
        only: tuple[str, ...] = (),
        exclude: tuple[str, ...] = (),
        symbols: tuple[str, ...] = (),
        nop: str | None = None,
        fsync: bool = True,
        record: bool = False,
    ) -> None:
        self.only, self.exclude, self.symbols, self.nop, self.fsync, self.record = (
            only,
            exclude,
            symbols,
            nop,
            fsync,
            record,
        )


class UsageError(Exception):
    """ftpatch-cc was called wrongly, or FTPATCH_CC_FLAGS holds what `nop` does not take."""


class _Interrupted(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _response_words(text: str) -> list[str]:
    """The words of a response file, split as libiberty's buildargv splits them (gcc's and clang's @file):
    at unquoted white space, with '...' and "..." quoting and a backslash escaping any character."""
    words: list[str] = []
    word: list[str] | None = None
    quote = ""
    escaped = False
    for c in text:
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
            word = word if word is not None else []
            continue
        elif quote:
            if c == quote:
                quote = ""
                continue
        elif c in "'\"":
            quote = c
            word = word if word is not None else []
            continue
        elif c.isspace():
            if word is not None:
                words.append("".join(word))
                word = None
            continue
        word = word if word is not None else []
        word.append(c)
    if word is not None:
        words.append("".join(word))
    return words


def expand_responses(args: list[str]) -> list[str]:
    """`args` with each readable @file replaced by its words, nested ones too, as gcc reads them;
    an @file that cannot be read stays a word, as the compiler keeps it."""
    out: list[str] = []
    pending = list(reversed(args))
    expansions = 0
    while pending:
        arg = pending.pop()
        if arg.startswith("@") and len(arg) > 1 and expansions < _RESPONSE_DEPTH:
            try:
                with open(arg[1:], encoding="utf-8", errors="surrogateescape") as f:
                    words = _response_words(f.read())
            except OSError:  # missing, unreadable, a directory: the compiler takes it as a file name
                pass
            else:
                expansions += 1
                pending.extend(reversed(words))
                continue
        out.append(arg)
    return out


def _object_name(source: str) -> str:
    """The object gcc and clang write for `source` under -c without -o: in the current directory,
    the last suffix replaced by .o (`-` read from stdin becomes `-.o`)."""
    base = os.path.basename(source)
    stem, dot, _ = base.rpartition(".")
    return f"{stem}.o" if dot and stem else f"{base}.o"


def compiled_objects(args: list[str]) -> list[str]:
    """The objects that the compiler command `args` (its words after the compiler's name) writes, in order;
    [] if it writes none: it does not compile (-c), stops earlier, compiles only headers, or writes to stdout."""
    args = expand_responses(args)
    compiling = False
    output: str | None = None
    sources: list[str] = []
    language: str | None = None  # -x LANG, until -x none
    words = iter(args)
    for arg in words:
        if arg in ("-c", "--compile"):
            compiling = True
        elif arg in _NO_OBJECT or arg.startswith(_NO_OBJECT_PREFIXES):
            return []
        elif arg in ("-o", "--output"):
            output = next(words, None)
        elif arg.startswith("--output="):
            output = arg.removeprefix("--output=")
        elif arg.startswith("-o") and not arg.startswith("-objcmt"):
            output = arg[2:]
        elif arg == "-x":
            language = next(words, "none")
        elif arg.startswith("-x"):
            language = arg[2:]
        elif arg in _SEPARATE:
            next(words, None)
        elif arg == "-" or not arg.startswith("-"):
            # A header under -x (or .h) becomes a precompiled header, not an object; `-` needs -x.
            if language not in (None, "none"):
                if not language.endswith("-header"):
                    sources.append(arg)
            elif arg != "-" and os.path.splitext(arg)[1] in _SOURCES:
                sources.append(arg)
    if not compiling or not sources or output == "-":
        return []
    if output is not None:
        if os.path.exists(output) and not stat.S_ISREG(os.stat(output).st_mode):
            return []  # -o /dev/null: a check that the code compiles, as configure and CMake make
        return [output]
    return list(dict.fromkeys(_object_name(s) for s in sources))


def options(text: str) -> Options:
    """FTPATCH_CC_FLAGS, split like a shell: the options of `ftpatch nop` that suit one object in place."""
    import shlex

    try:
        words = shlex.split(text)
    except ValueError as e:
        raise UsageError(f"FTPATCH_CC_FLAGS: {e}") from None
    taken: dict[str, list[str]] = {"--only": [], "--except": [], "--symbol": [], "--nop": []}
    flags = {"--no-fsync": False, "--record": False}
    rest = iter(words)
    for word in rest:
        name, eq, value = word.partition("=")
        if name in taken:
            if not eq:
                following = next(rest, None)
                if following is None:
                    raise UsageError(f"FTPATCH_CC_FLAGS: {name} needs a value")
                value = following
            taken[name].append(value)
        elif word in flags:
            flags[word] = True
        else:
            raise UsageError(
                f"FTPATCH_CC_FLAGS: {word!r} is not an option ftpatch-cc passes to nop; it takes --only GLOB, "
                "--except GLOB, --symbol NAME, --nop STYLE, --no-fsync and --record"
            )
    nop = taken["--nop"][-1] if taken["--nop"] else None
    if nop is not None:
        from .x86 import NOP_STYLES

        if nop not in NOP_STYLES:
            raise UsageError(f"FTPATCH_CC_FLAGS: --nop {nop!r}: choose one of {', '.join(NOP_STYLES)}")
    return Options(
        tuple(taken["--only"]),
        tuple(taken["--except"]),
        tuple(taken["--symbol"]),
        nop,
        not flags["--no-fsync"],
        flags["--record"],
    )


def _error(message: str) -> None:
    from .errors import printable

    print(f"ftpatch: error: {printable(message)}", file=sys.stderr)


# Python ignores these itself at start; a compiler must get them as a shell would give them.
_PYTHON_IGNORES = (signal.SIGPIPE, signal.SIGXFSZ)
# What a terminal, make or a CI runner sends to stop a build: passed on to the compiler, whose death by it
# becomes ours, so the caller sees what it would have seen without ftpatch-cc.
_STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def _die_like(signum: int) -> None:
    """End this process by `signum`, as the compiler ended, so make and shells report the same death."""
    signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
    os.kill(os.getpid(), signum)
    sys.exit(128 + signum)  # only if the signal did not end us (it is blocked by something we cannot see)


def _not_found(command: str, error: OSError) -> None:
    _error(f"{command}: {(error.strerror or str(error)).lower()}")
    sys.exit(127 if isinstance(error, FileNotFoundError) else 126)


def _exec(argv: list[str]) -> None:
    """Become the command: same argv, streams, pid and signals; its status is ours."""
    for s in _PYTHON_IGNORES:
        signal.signal(s, signal.SIG_DFL)
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        _not_found(argv[0], e)


def _compile(argv: list[str]) -> int:
    """Run the command as a child with our streams and wait for it; its exit status, or die as it died."""
    child: list[int] = []
    pending: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if child:
            os.kill(child[0], signum)
        else:
            pending.append(signum)

    # A stop the caller ignores (`make &` in a script ignores SIGINT) stays ignored, in the compiler too.
    for s in _STOPS:
        if signal.getsignal(s) is not signal.SIG_IGN:
            signal.signal(s, forward)
    try:
        child.append(os.posix_spawnp(argv[0], argv, os.environ, setsigdef=_PYTHON_IGNORES))
    except OSError as e:
        _not_found(argv[0], e)
    for signum in pending:
        os.kill(child[0], signum)
    # While the compiler runs, load what the nop needs: on a second core the import costs no wall time.
    from . import patch  # noqa: F401

    _, status = os.waitpid(child[0], 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        _die_like(-code)
    return code


def _nop(objects: list[str], opts: Options) -> int:
    """Nop each object in place; on any failure remove them all (make must not keep a target that is not
    what its rule makes) and return the worst exit code."""
    from .errors import FtpatchError
    from .exits import EXIT_INTERNAL, EXIT_OK, exit_code
    from .patch import patch_file
    from .sites import DEFAULT_TARGETS, Action

    worst = EXIT_OK
    for path in objects:
        try:
            plan = patch_file(
                path,
                Action.NOP,
                nop=opts.nop,
                only=opts.only,
                exclude=opts.exclude,
                targets=(*DEFAULT_TARGETS, *opts.symbols),
                fsync=opts.fsync,
                record=opts.record,
            )
        except FtpatchError as e:
            _error(str(e))
            worst = max(worst, exit_code(e))
            continue
        except Exception as e:  # noqa: BLE001 - a bug in ftpatch: the object must not survive it either
            _error(f"internal error: {type(e).__name__}: {e} (run `ftpatch nop --debug` on the object)")
            worst = EXIT_INTERNAL
            continue
        for warning in plan.warnings:
            print(f"ftpatch: warning: {path}: {warning}", file=sys.stderr)
    if worst != EXIT_OK:
        _remove(objects)
    return worst


def _remove(objects: list[str]) -> None:
    for path in objects:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            _error(f"{path}: cannot remove: {(e.strerror or str(e)).lower()}")


def _usage(text: str | None = None) -> None:
    from .exits import EXIT_USAGE

    if text:
        print(text, file=sys.stderr)
    sys.exit(EXIT_USAGE)


def _interrupt(signum: int, _frame: object) -> None:
    raise _Interrupted(signum)


def main() -> None:
    argv = sys.argv[1:]
    if not argv:
        _usage(USAGE)
    if argv[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0)
    if argv[0] == "--version":
        from . import __version__

        print(f"ftpatch-cc {__version__}")
        sys.exit(0)
    objects = compiled_objects(argv[1:])
    if not objects:
        _exec(argv)
    try:
        opts = options(os.environ.get("FTPATCH_CC_FLAGS", ""))
    except UsageError as e:
        _error(str(e))
        _usage()
    status = _compile(argv)
    if status:
        sys.exit(status)
    for s in _STOPS:
        if signal.getsignal(s) is not signal.SIG_IGN:
            signal.signal(s, _interrupt)
    try:
        sys.exit(_nop(objects, opts))
    except _Interrupted as e:
        # The object may be whole and not nop'd: remove it, so that make compiles it again.
        _remove(objects)
        _die_like(e.signum)


if __name__ == "__main__":
    main()
