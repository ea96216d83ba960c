"""ftpatch: turn mcount/__fentry__ profiling calls in x86 ELF files into nops, and back.

The library never prints and never exits; it returns values or raises a
FtpatchError. capstone and pyelftools are imported only when a file needs them.
"""

from .errors import FtpatchError, InputError, OutputError, VerifyError
from .patch import Patch, Plan, Proof, Rewrite, apply, patch_file, plan, plan_all
from .record import Recording, record_file
from .scan import scan, scan_path
from .sites import DEFAULT_TARGETS, Action, Checks, Finding, Located, ScanResult, Site, SiteGroup, State
from .x86 import NOP_STYLES, Arch, Form, NopStyle

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TARGETS",
    "NOP_STYLES",
    "Action",
    "Arch",
    "Checks",
    "Finding",
    "Form",
    "FtpatchError",
    "InputError",
    "Located",
    "NopStyle",
    "OutputError",
    "Patch",
    "Plan",
    "Proof",
    "Recording",
    "Rewrite",
    "ScanResult",
    "Site",
    "SiteGroup",
    "State",
    "VerifyError",
    "__version__",
    "apply",
    "patch_file",
    "plan",
    "plan_all",
    "record_file",
    "scan",
    "scan_path",
]
