"""The command line: the only module that prints or exits.

Exit codes, mapped from the error hierarchy here and nowhere else:
0 success (nothing to do included), 1 bad input or output, 2 usage,
3 verification failed, 70 internal error (a bug: please report it),
128+N interrupted by signal N (SIGINT, SIGTERM, SIGHUP), with every
temporary file removed.

No `from __future__ import annotations` here: typer would then evaluate every
parameter's annotation from its text at each start, 2 ms of a one-object run.
"""

import atexit
import gc
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from . import __version__
from .errors import FtpatchError, printable
from .exits import EXIT_INPUT, EXIT_INTERNAL, EXIT_OK, EXIT_VERIFY, exit_code
from .x86 import NOP_STYLES

if TYPE_CHECKING:
    from . import batch, report
    from .sites import Action

EXIT_CODES_HELP = (
    "Exit codes: 0 success, including nothing to do; 1 bad input or output (not ELF, unsupported "
    "machine, truncated, unwritable); 2 usage; 3 verification failed (a site holds unexpected "
    "bytes: nothing was written); 70 internal error; 128+N interrupted by signal N."
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Turn mcount/__fentry__ profiling calls in x86 ELF files into nops, and back.\n\n" + EXIT_CODES_HELP,
)
_debug = False


# The --nop choices are the styles' names: x86.py is pure tables, cheap to import at every start.
NopChoice = StrEnum("NopChoice", {name: name for name in NOP_STYLES})  # type: ignore[misc]


def _error(message: str) -> None:
    print(f"ftpatch: error: {printable(message)}", file=sys.stderr)


def _warning(message: str) -> None:
    print(f"ftpatch: warning: {printable(message)}", file=sys.stderr)


def _print_json(doc: object) -> None:
    # report imports json: only --json and scan pay for it, not the one-line runs of a per-object build rule
    from . import report

    print(report.json_text(doc))


def _usage(message: str) -> NoReturn:
    raise typer.BadParameter(message)


def _version(value: bool) -> None:
    if value:
        print(f"ftpatch {__version__}")
        raise typer.Exit()


@app.callback()
def common(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show a traceback on errors.")] = False,
) -> None:
    global _debug
    _debug = debug


Files = Annotated[list[str] | None, typer.Argument(help="ELF files or static archives.", show_default=False)]
Symbols = Annotated[
    list[str],
    typer.Option("--symbol", metavar="NAME", help="Also treat calls to NAME as profiling calls (gcc -mfentry-name=)."),
]
Only = Annotated[
    list[str], typer.Option("--only", metavar="GLOB", help="Patch only functions matching GLOB (repeatable).")
]
Except = Annotated[
    list[str], typer.Option("--except", metavar="GLOB", help="Leave functions matching GLOB alone (repeatable).")
]
Output = Annotated[str | None, typer.Option("-o", "--output", metavar="FILE", help="Write the result here.")]
InPlace = Annotated[bool, typer.Option("--in-place", help="Replace each input file atomically.")]
FilesFrom = Annotated[
    str | None,
    typer.Option("--files-from", metavar="LIST", help="Also read input paths from LIST, one per line; - is stdin."),
]
Jobs = Annotated[int | None, typer.Option("-j", "--jobs", min=1, help="Files processed in parallel [default: CPUs].")]
FailFast = Annotated[bool, typer.Option("--fail-fast", help="Stop at the first file that fails.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print a JSON report instead of one line per file.")]
Quiet = Annotated[
    bool, typer.Option("-q", "--quiet", help="No line per file; errors, and the summary of a run over several files.")
]
NoFsync = Annotated[
    bool,
    typer.Option(
        "--no-fsync",
        help="Do not fsync files and directories: each replace stays atomic, but a power loss may undo it "
        "(for build trees, whose objects the compiler did not fsync either).",
    ),
]


def _targets(symbols: list[str]) -> tuple[str, ...]:
    from .sites import DEFAULT_TARGETS

    return (*DEFAULT_TARGETS, *symbols)


def _inputs(files: list[str] | None, files_from: str | None) -> list[str]:
    paths = list(files or [])
    if files_from is not None:
        try:
            text = sys.stdin.read() if files_from == "-" else Path(files_from).read_text(encoding="utf-8")
        except OSError as e:
            _usage(f"--files-from {files_from}: {(e.strerror or str(e)).lower()}")
        paths += [line for line in text.splitlines() if line.strip()]
    if not paths:
        _usage("no input files")
    return paths


@app.command()
def scan(
    files: Files = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print JSON: {"files": [{path, machine, type, sites}]}.')
    ] = False,
    files_from: FilesFrom = None,
    symbol: Symbols = [],  # noqa: B006 - typer reads the default, never mutates it
    only: Only = [],  # noqa: B006
    exclude: Except = [],  # noqa: B006
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No line per file or site; errors only.")] = False,
) -> None:
    """List the profiling call sites of each file: section+offset, form, state, function.

    With --only / --except, only the sites that `nop` and `call` would touch."""
    from . import report
    from .scan import scan_path
    from .sites import chosen

    worst = EXIT_OK
    entries: list[dict[str, object]] = []
    matched: set[str] = set()
    scanned = 0
    for path in _inputs(files, files_from):
        try:
            results = scan_path(path, _targets(symbol))
        except FtpatchError as e:
            _error(str(e))
            worst = max(worst, exit_code(e))
            if as_json:
                entries.append(report.unreadable_entry(e, exit_code(e)))
            continue
        scanned += 1
        for result in results:
            sites = [s for s in result.sites if not (only or exclude) or chosen(s.function, only, exclude, matched)]
            if not (as_json or quiet):
                filtered = len(result.sites) - len(sites) if only or exclude else None
                print("\n".join(report.site_table(result, sites, filtered, _width())))
            verdict = report.scan_verdict(result, sites)
            for warning in verdict.warnings:
                _warning(warning)
            for text, _verify in verdict.errors:
                _error(text)
            # The JSON names the first error of the worst kind, with the exit code it gives.
            codes = [(EXIT_VERIFY if verify else EXIT_INPUT, text) for text, verify in verdict.errors]
            failure = max(codes, key=lambda c: c[0]) if codes else None
            worst = max(worst, failure[0] if failure else EXIT_OK)
            if as_json:
                entries.append(report.scan_entry(result, sites, failure))
    warnings = report.unmatched(only, exclude, matched, scanned)
    for warning in warnings:
        _warning(warning)
    if as_json:
        _print_json({"files": entries, "warnings": warnings})
    raise typer.Exit(worst)


def _width() -> int | None:
    """The terminal's width, for the site table: on a terminal a row fits it, as ps does; piped, every name
    is whole, for grep."""
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None


def _progress(total: int, label: str) -> Callable[[], None] | None:
    """A progress bar on stderr, only for a person watching a long run."""
    if total <= 8 or not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import Progress

    bar = Progress(transient=True, console=Console(stderr=True))
    task = bar.add_task(label, total=total)
    bar.start()
    bar.refresh()  # drawn at once, not after the first tick, so even a short run shows it started
    advance = partial(bar.advance, task)
    atexit.register(bar.stop)
    return advance


def _paths(files: list[str] | None, files_from: str | None, output: str | None, in_place: bool) -> list[str]:
    """The inputs of a command that writes files, checked against -o and --in-place."""
    paths = _inputs(files, files_from)
    if in_place == (output is not None):
        _usage("give exactly one of -o FILE or --in-place")
    if output is not None:
        if len(paths) != 1:
            _usage("-o takes exactly one input file; use --in-place for several")
        if os.path.exists(output) and os.path.exists(paths[0]) and os.path.samefile(output, paths[0]):
            _usage(f"-o {output} is the input file; use --in-place to replace it")
    return paths


@dataclass(frozen=True)
class _Batch:
    """How a command that writes files runs and reports: the options nop, call and record share."""

    output: str | None
    jobs: int | None
    fail_fast: bool
    as_json: bool
    quiet: bool


def _run(
    words: "report.Words",
    job: "batch.Job | batch.RecordJob",
    paths: list[str],
    how: _Batch,
    only: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
) -> NoReturn:
    """Run a command that writes files over `paths`, print what became of each, and exit with the worst code.
    `only`, `exclude`: the run's globs, each warned of once if no function of any file matched it."""
    from . import batch, report

    started = time.monotonic()
    advance = _progress(len(paths), words.label)
    worst = EXIT_OK
    entries = []
    totals = {"files": 0, **dict.fromkeys(words.counts, 0), "failed": 0}
    matched: set[str] = set()
    try:
        for outcome in batch.run(paths, job, how.jobs or os.cpu_count() or 1, how.fail_fast):
            totals["files"] += 1
            if advance:
                advance()
            if outcome.error is not None:
                code = exit_code(outcome.error)
                worst = max(worst, code)
                totals["failed"] += 1
                _error(str(outcome.error))
                entries.append(report.failed_entry(outcome, how.output, code))
                continue
            matched |= outcome.matched
            for warning in outcome.warnings:
                _warning(f"{outcome.path}: {warning}")
            entry = report.done_entry(outcome, how.output, words)
            for key in words.counts:
                totals[key] += entry[key]
            entries.append(entry)
            if not (how.quiet or how.as_json):
                dest = f" -> {how.output}" if how.output else ""
                print(f"{outcome.path}{dest}: {words.line(outcome)}")
    except FtpatchError as e:  # syncing the output directories at the end failed
        _error(str(e))
        worst = max(worst, exit_code(e))
    warnings = report.unmatched(only, exclude, matched, totals["files"] - totals["failed"])
    for warning in warnings:
        _warning(warning)
    if how.as_json:
        _print_json({"action": words.action, "files": entries, "summary": totals, "warnings": warnings})
    elif len(paths) > 1:
        print(
            f"ftpatch {words.action}: {totals['files']} files, {words.summary(totals)}, "
            f"{totals['failed']} failed, {time.monotonic() - started:.2f} s",
            file=sys.stderr,
        )
    raise typer.Exit(worst)


def _patch(
    action: "Action",
    paths: list[str],
    how: _Batch,
    *,
    style: NopChoice | None,
    only: list[str],
    exclude: list[str],
    symbol: list[str],
    no_fsync: bool,
    record: bool,
    target: str | None = None,
) -> NoReturn:
    from . import batch, report

    nop = style.value if style else None
    job = batch.Job(
        action, how.output, nop, tuple(only), tuple(exclude), _targets(symbol), not no_fsync, record, target
    )
    _run(report.patch_words(action.value, record), job, paths, how, job.only, job.exclude)


@app.command()
def nop(
    files: Files = None,
    output: Output = None,
    in_place: InPlace = False,
    style: Annotated[
        NopChoice | None,
        typer.Option("--nop", help="Nop style (see `ftpatch nops`); default p6 on x86-64, lea on i386."),
    ] = None,
    only: Only = [],  # noqa: B006
    exclude: Except = [],  # noqa: B006
    symbol: Symbols = [],  # noqa: B006
    files_from: FilesFrom = None,
    jobs: Jobs = None,
    fail_fast: FailFast = False,
    as_json: AsJson = False,
    quiet: Quiet = False,
    no_fsync: NoFsync = False,
    record: Annotated[
        bool,
        typer.Option(
            "--record",
            help="Also write __mcount_loc into each object that has none, as `ftpatch record` does, in the same "
            "pass (objtool's --mcount --mnop).",
        ),
    ] = False,
) -> None:
    """Turn every profiling call into a nop, after verifying every site."""
    from .sites import Action

    paths = _paths(files, files_from, output, in_place)
    how = _Batch(output, jobs, fail_fast, as_json, quiet)
    _patch(
        Action.NOP, paths, how, style=style, only=only, exclude=exclude, symbol=symbol, no_fsync=no_fsync, record=record
    )


@app.command()
def call(
    files: Files = None,
    output: Output = None,
    in_place: InPlace = False,
    only: Only = [],  # noqa: B006
    exclude: Except = [],  # noqa: B006
    symbol: Symbols = [],  # noqa: B006
    files_from: FilesFrom = None,
    jobs: Jobs = None,
    fail_fast: FailFast = False,
    as_json: AsJson = False,
    quiet: Quiet = False,
    no_fsync: NoFsync = False,
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            metavar="NAME",
            help="Make every chosen site a call to the function NAME instead (a hook: see README.md), whatever "
            "it holds now; NAME is also a target, as with --symbol. A linked file must define NAME or reach it "
            "through its PLT or GOT; an object gets an undefined symbol NAME if it has none.",
        ),
    ] = None,
) -> None:
    """Turn nop'd profiling sites back into the exact calls, after verifying every site.

    With --target NAME, point every chosen site at NAME instead (ftrace_make_call with any address)."""
    from .sites import Action

    if target is not None and not target.strip():
        _usage("--target needs a function's name")
    paths = _paths(files, files_from, output, in_place)
    how = _Batch(output, jobs, fail_fast, as_json, quiet)
    _patch(
        Action.CALL,
        paths,
        how,
        style=None,
        only=only,
        exclude=exclude,
        symbol=symbol,
        no_fsync=no_fsync,
        record=False,
        target=target,
    )


@app.command()
def record(
    files: Files = None,
    output: Output = None,
    in_place: InPlace = False,
    symbol: Symbols = [],  # noqa: B006
    files_from: FilesFrom = None,
    jobs: Jobs = None,
    fail_fast: FailFast = False,
    as_json: AsJson = False,
    quiet: Quiet = False,
    no_fsync: NoFsync = False,
) -> None:
    """Write __mcount_loc, the table of profiling call sites, into each object, as the kernel's recordmcount does.

    Objects (and archive members) that already have __mcount_loc, or no sites, are left as they are.
    """
    paths = _paths(files, files_from, output, in_place)
    from . import batch, report

    job = batch.RecordJob(output, _targets(symbol), not no_fsync)
    _run(report.RECORD_WORDS, job, paths, _Batch(output, jobs, fail_fast, as_json, quiet))


@app.command()
def nops() -> None:
    """List the nop styles: name, 5-byte and 6-byte members at a function's entry, where each is a nop."""
    from .x86 import I386, NOP_STYLES, X32, X86_64

    for s in NOP_STYLES.values():
        where = "x86-64, x32 and i386" if s.x86_64 else "i386 only"
        arches = (("x86-64", X86_64), ("x32", X32), ("i386", I386))
        default = [label for label, arch in arches if arch.default_nop == s.name]
        mark = f" (default on {', '.join(default)})" if default else ""
        print(f"{s.name:4} {s.nop5.hex(' '):17} {s.nop6.hex(' '):20} {where}{mark}: {s.about}")


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived: unwinds like KeyboardInterrupt, so every temporary file is removed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


def main() -> None:
    # Signal handlers can only be set from the main thread; elsewhere the caller owns the signals.
    handled = (
        (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if threading.current_thread() is threading.main_thread() else ()
    )
    saved = {s: signal.signal(s, _interrupt) for s in handled}
    # What is alive now (typer, the commands, ftpatch's modules: some 18,000 objects the collector
    # tracks) lives until exit. Frozen, the collector never walks it again, above all in the full
    # collection at exit, 8% of the CPU of `ftpatch nop small.o -o out.o`.
    gc.freeze()
    try:
        app(prog_name="ftpatch")
    except Interrupted as e:
        # Files already done stay done, the one being written is left as it was.
        _error(f"interrupted by {signal.Signals(e.signum).name}")
        sys.exit(128 + e.signum)
    except Exception as e:
        if _debug:
            raise
        _error(f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback)")
        sys.exit(EXIT_INTERNAL)
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
