"""C++ names: the demangled form of a symbol, and the forms of it that --only and --except match.

g++ and clang++ mangle names by the Itanium C++ ABI. ftpatch demangles them with
GCC's own demangler, `__cxa_demangle` in libstdc++: the same cp-demangle.c that
binutils' c++filt, `nm -C` and `objdump -C` use (through libiberty, which Debian
ships only as a static archive), so a name reads here as those tools print it.
libstdc++.so.6 is on every Debian system (apt depends on it) and is loaded with
ctypes the first time a mangled name is shown or matched: a C file never loads it.
Where it cannot be loaded, names stay as they are in the symbol table.

A glob given to --only or --except matches a function by its symbol, by its
demangled name, or by that name without its parameters, as `c++filt -p` prints it
(`tinyxml2::XMLDocument::Parse`), which is how gdb and ftrace users name one.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

# Where a name's top-level parts are: inside none of these, a space or a parenthesis is the name's own.
_OPEN, _CLOSE = "<({[", ">)}]"
_QUALIFIERS = (" const", " volatile", " &&", " &")


@cache
def _demangler() -> Callable[[bytes], bytes | None] | None:
    """__cxa_demangle from libstdc++, as bytes -> bytes (None if the name is not a mangled one); None if missing."""
    import ctypes

    try:
        cxa_demangle = ctypes.CDLL("libstdc++.so.6").__cxa_demangle
        free = ctypes.CDLL(None).free
    except (OSError, AttributeError):
        return None
    cxa_demangle.restype = ctypes.c_void_p
    cxa_demangle.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
    free.argtypes = [ctypes.c_void_p]

    def demangle(symbol: bytes) -> bytes | None:
        status = ctypes.c_int()
        text = cxa_demangle(symbol, None, None, ctypes.byref(status))
        if not text:
            return None
        try:
            return ctypes.string_at(text)
        finally:
            free(text)  # __cxa_demangle returns memory from malloc, which the caller frees

    return demangle


def available() -> bool:
    """Whether mangled names can be demangled on this machine."""
    return _demangler() is not None


@cache
def demangle(symbol: str) -> str:
    """`symbol` demangled; itself if it is not a mangled C++ name, or cannot be demangled here."""
    if not symbol.startswith("_Z") or (demangler := _demangler()) is None:
        return symbol
    text = demangler(symbol.encode("utf-8", "backslashreplace"))
    return text.decode("utf-8", "backslashreplace") if text else symbol


def without_parameters(name: str) -> str:
    """A demangled function name without its parameters, qualifiers, clone suffixes and return type,
    as `c++filt -p` prints it: `void ns::f<int>(int) const [clone .cold]` is `ns::f<int>`."""
    while name.endswith("]") and (clone := name.rfind(" [clone ")) > 0:
        name = name[:clone]
    while name.endswith(_QUALIFIERS):
        name = name[: name.rfind(" ")]
    if not name.endswith(")"):
        return name
    # The parameters are the last parenthesised group; parentheses nest within it (function types).
    depth = 0
    for i in range(len(name) - 1, -1, -1):
        depth += (name[i] == ")") - (name[i] == "(")
        if depth == 0:
            name = name[:i]
            return name[_name_start(name) :]
    return name


def _name_start(name: str) -> int:
    """Where the qualified name starts, after the return type that function templates are printed with:
    after the last space outside brackets, up to the operator keyword (`operator new`, `operator<`)."""
    depth, start, i = 0, 0, 0
    while i < len(name):
        c = name[i]
        if depth == 0 and name.startswith("operator", i) and (i == 0 or name[i - 1] in ": "):
            break  # what follows may hold <, > or a space of its own: `operator< <int>`, `operator bool`
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
        elif c == " " and depth == 0:
            start = i + 1
        i += 1
    return start


@cache  # a site is matched against --only and then --except
def names(symbol: str) -> tuple[str, ...]:
    """The forms of a function's name that a glob may match: the symbol, demangled, and without parameters."""
    demangled = demangle(symbol)
    if demangled == symbol:
        return (symbol,)
    return (symbol, demangled, without_parameters(demangled))
