"""Exit codes, and the one mapping from the error hierarchy to them, for both front ends (ftpatch, ftpatch-cc).

0 success (nothing to do included), 1 bad input or output, 2 usage, 3 verification failed,
70 internal error (a bug: please report it), 128+N interrupted by signal N.
It imports only errors.py, so ftpatch-cc can map an error without loading the command line.
"""

from __future__ import annotations

from .errors import FtpatchError, VerifyError

EXIT_OK, EXIT_INPUT, EXIT_USAGE, EXIT_VERIFY, EXIT_INTERNAL = 0, 1, 2, 3, 70


def exit_code(error: FtpatchError) -> int:
    return EXIT_VERIFY if isinstance(error, VerifyError) else EXIT_INPUT
