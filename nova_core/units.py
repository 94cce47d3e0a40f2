"""Parsing and formatting of sizes such as ``512Mi``, ``16Gi``, ``1G`` or plain bytes."""

from __future__ import annotations

import re

_SUFFIXES = {
    "": 1,
    "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKMGT]i?)?[bB]?\s*$")


def parse_size(value: object) -> int:
    """Return a size in bytes.

    Accepts an int (bytes), or a string: ``"1073741824"``, ``"512Mi"``, ``"16Gi"``,
    ``"1G"`` (decimal), ``"1.5Gi"``.

    >>> parse_size("512Mi")
    536870912
    >>> parse_size("1G")
    1000000000
    """
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string like '512Mi', not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, float):
        raise ValueError(f"write the size as a string with a unit, e.g. '{value}Gi'")
    if not isinstance(value, str):
        raise ValueError(f"a size must be a string like '512Mi' or '16Gi', not {type(value).__name__}")
    match = _SIZE_RE.match(value)
    if not match:
        raise ValueError(
            f"'{value}' is not a size; use bytes or a number with a unit: "
            "512Mi, 16Gi (binary), 1G (decimal)"
        )
    number, suffix = match.group(1), match.group(2) or ""
    return int(float(number) * _SUFFIXES[suffix])


def format_size(size: int) -> str:
    """Return a short human form of a byte count, e.g. ``16Gi``."""
    for suffix, factor in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{suffix}"
    for suffix, factor in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if size >= factor:
            return f"{size / factor:.1f}{suffix}"
    return f"{size}B"
