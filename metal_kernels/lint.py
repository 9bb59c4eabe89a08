"""Checks for Metal rules the CPU emulator erases, so a kernel that runs there also compiles on a Mac.

The emulator defines the address-space keywords away and runs `threadgroup` arrays as statics, so
it cannot notice a pointer without an address space (a Metal compile error), and it poisons
`double` only in the kernel text it compiles. This lint reads the kernel sources themselves.
The 32 KB threadgroup-memory limit is checked per instantiation by the emulator (emulate.build).
"""

from __future__ import annotations

import re

ADDRESS_SPACES = ("device", "constant", "threadgroup", "thread")
# A pointer declaration or cast: `TYPE* name =`, `TYPE* name;`, `(TYPE*)`, with optional const.
_POINTER = re.compile(r"(?P<prefix>(?:\b\w+\s+)*?)\b(?P<type>[A-Za-z_]\w*)\s*\*\s*(?:(?P<name>[A-Za-z_]\w*)\s*[=;]|\))")


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def lint(text: str, where: str = "kernel") -> list[str]:
    """Problems in a kernel body or header, one line each ('where:line: message')."""
    problems = []
    for n, line in enumerate(_strip_comments(text).splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue  # preprocessor lines: macros are checked where they expand
        if re.search(r"\bdouble\b", line):
            problems.append(f"{where}:{n}: Metal has no double")
        for m in _POINTER.finditer(line):
            words = re.findall(r"\w+", line[: m.start("type")])
            # Only a declaration or cast looks like `type* name =`; a product `a * b` has an operand
            # before it that is not a type keyword, so look at the word right before the type.
            before = words[-1] if words else ""
            is_decl = before in ("const", *ADDRESS_SPACES) or line[: m.start("type")].rstrip().endswith(("(", "{", ";")) or not before
            if not is_decl:
                continue
            if not any(space in words[-3:] for space in ADDRESS_SPACES):
                problems.append(f"{where}:{n}: pointer to {m['type']} without an address space (device, constant, threadgroup or thread)")
    return problems
