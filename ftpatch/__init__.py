"""ftpatch: turn mcount/__fentry__ profiling calls in x86 ELF files into nops, and back.

The library never prints and never exits; it returns values or raises a
FtpatchError. capstone and pyelftools are imported only when a file needs them.
Each name below is imported on first use: `import ftpatch` alone, which every
run of `ftpatch` and `ftpatch-cc` does, loads none of the library.
"""

import importlib
import sys
from types import ModuleType

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing, which a pass-through of ftpatch-cc never needs
if TYPE_CHECKING:
    from .errors import FtpatchError, InputError, OutputError, VerifyError
    from .patch import Patch, Plan, Proof, Rewrite, apply, patch_file, plan, plan_all
    from .record import Recording, record_file
    from .scan import scan, scan_path
    from .sites import DEFAULT_TARGETS, Action, Checks, Finding, Located, ScanResult, Site, SiteGroup, State
    from .x86 import NOP_STYLES, Arch, Form, NopStyle

__version__ = "0.2.0"

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

# Where each public name lives: imported when first asked for (PEP 562).
_HOMES = {
    **dict.fromkeys(("FtpatchError", "InputError", "OutputError", "VerifyError"), "errors"),
    **dict.fromkeys(("Patch", "Plan", "Proof", "Rewrite", "apply", "patch_file", "plan", "plan_all"), "patch"),
    **dict.fromkeys(("Recording", "record_file"), "record"),
    **dict.fromkeys(("scan", "scan_path"), "scan"),
    **dict.fromkeys(
        ("DEFAULT_TARGETS", "Action", "Checks", "Finding", "Located", "ScanResult", "Site", "SiteGroup", "State"),
        "sites",
    ),
    **dict.fromkeys(("NOP_STYLES", "Arch", "Form", "NopStyle"), "x86"),
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'ftpatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(ModuleType):
    def __setattr__(self, name: str, value: object) -> None:
        # Importing the submodule ftpatch.scan sets the package's `scan` to that module, and the library
        # imports it before many a caller first asks for ftpatch.scan: the name stays the function.
        if name == "scan" and isinstance(value, ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
