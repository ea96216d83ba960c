"""Many files at once: each file succeeds or fails on its own, in parallel processes.

Workers import capstone and pyelftools only when a file needs them: linked files
do, objects do not, and a batch of objects as a build runs it no longer pays for
them (a third of the time of 15 zlib objects; 40 linked programs take as long as
when the parent imported them before forking). Results come back in input order,
so the report is the same whatever the number of workers.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial

from .errors import FtpatchError
from .patch import patch_file
from .sites import Action
from .write import sync_directory


@dataclass(frozen=True)
class Outcome:
    """What became of one file: its counts, or its error. It carries no patches: it crosses processes."""

    path: str
    error: FtpatchError | None = None
    patched: int = 0
    already: int = 0
    filtered: int = 0
    changed: bool = False  # the file's bytes changed
    warnings: tuple[str, ...] = ()
    matched: frozenset[str] = frozenset()  # the --only / --except globs that matched a function of the file
    recorded: int = 0  # sites listed in the __mcount_loc tables written (record, nop --record)
    already_recorded: int = 0  # objects left without a new table because they have one


@dataclass(frozen=True)
class Job:
    """`nop` or `call` on each file."""

    action: Action
    output: str | None  # None: in place
    nop: str | None
    only: tuple[str, ...]
    exclude: tuple[str, ...]
    targets: tuple[str, ...]
    fsync: bool = True  # False: no fsync of files or directories (see write_atomic)
    record: bool = False  # nop --record: write __mcount_loc in the same pass
    target: str | None = None  # call --target: the function every chosen site calls

    def run(self, path: str) -> Outcome:
        plan = patch_file(
            path,
            self.action,
            output=self.output,
            nop=self.nop,
            only=self.only,
            exclude=self.exclude,
            targets=self.targets,
            sync_dir=False,
            fsync=self.fsync,
            record=self.record,
            target=self.target,
        )
        done = plan.recording
        return Outcome(
            path,
            None,
            plan.patched,
            plan.already,
            plan.filtered,
            plan.changes or (done is not None and done.changed),
            plan.warnings,
            plan.matched,
            done.recorded if done else 0,
            done.already if done else 0,
        )


@dataclass(frozen=True)
class RecordJob:
    """`record` on each file."""

    output: str | None  # None: in place
    targets: tuple[str, ...]
    fsync: bool = True

    def run(self, path: str) -> Outcome:
        from .record import record_file  # here: a nop, one per object in a build, never imports it

        done = record_file(path, output=self.output, targets=self.targets, sync_dir=False, fsync=self.fsync)
        return Outcome(path, None, changed=done.changed, recorded=done.recorded, already_recorded=done.already)


def _one(job: Job | RecordJob, path: str) -> Outcome:
    try:
        return job.run(path)
    except FtpatchError as e:
        return Outcome(path, e)


# The signals the command line turns into an orderly stop.
_STOPS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def _worker_init() -> None:
    # Ctrl-C reaches the whole process group: the parent alone handles it, by terminating the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Idle, a worker just exits on SIGTERM, as between files (_one_in_worker).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Born with these blocked (_outcomes): one sent since the fork is delivered now, to these handlers.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)


def _one_in_worker(job: Job | RecordJob, path: str) -> Outcome:
    # Terminated mid-file, a worker must unwind so that write_atomic removes its temporary;
    # terminated while idle, it just exits.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return _one(job, path)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _outcomes(paths: Sequence[str], job: Job | RecordJob, workers: int, fail_fast: bool) -> Iterator[Outcome]:
    if workers <= 1 or len(paths) <= 1:
        for path in paths:
            outcome = _one(job, path)
            yield outcome
            if fail_fast and outcome.error:
                return
        return
    import multiprocessing  # here: one file (a per-object build rule) never pays its import, 7% of its run

    chunk = max(1, min(64, len(paths) // (workers * 8)))
    # Workers are forked with the stop signals blocked, and unblock them once their handlers are set.
    # Python forgets a signal that reaches a new process before it has set itself up after the fork:
    # a SIGTERM from pool.terminate() was lost so, under load, and the pool waited for that worker forever.
    # The parent gets what was sent meanwhile when it unblocks them.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
    try:
        pool = multiprocessing.get_context("fork").Pool(workers, initializer=_worker_init)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    with pool:
        for outcome in pool.imap(partial(_one_in_worker, job), paths, chunksize=chunk):
            yield outcome
            if fail_fast and outcome.error:
                pool.terminate()
                return
        pool.close()
        pool.join()


def run(paths: Sequence[str], job: Job | RecordJob, workers: int = 1, fail_fast: bool = False) -> Iterator[Outcome]:
    """Outcomes in input order; with fail_fast, none after the first failure.

    Each file is fsynced before it is renamed into place; the directories the
    renames went to are synced once, at the end, rather than once a file.
    With job.fsync False, nothing is synced.
    """
    written: set[str] = set()
    try:
        for outcome in _outcomes(paths, job, workers, fail_fast):
            if job.fsync and outcome.error is None and (outcome.changed or job.output is not None):
                written.add(os.path.dirname(os.path.abspath(job.output or outcome.path)))
            yield outcome
    finally:
        for directory in sorted(written):
            sync_directory(directory)
