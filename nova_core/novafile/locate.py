"""Find the line of a table or key in TOML text, for error messages.

tomllib reports lines only for syntax errors; this scanner maps table paths
(``vm.win11.memory``) to the line that defines them. It understands headers,
dotted and quoted keys, which is what NovaFiles use; anything it cannot place
falls back to the nearest enclosing table.
"""

from __future__ import annotations

import re

_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*((?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_.\- \t])+?)\s*=")
# compiled at import, which a warm helper's children inherit (re's own cache is per process)
_PART = re.compile(r"\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_\-]+)")


def _split_key(text: str) -> tuple[str, ...]:
    parts: list[str] = []
    for match in _PART.finditer(text):
        parts.append(next(g for g in match.groups() if g is not None))
    return tuple(parts)


def index_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map every table and key path in ``text`` to its 1-based line number."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            table = _split_key(header.group(1))
            lines.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key:
            path = table + _split_key(key.group(1))
            for depth in range(len(table) + 1, len(path) + 1):
                lines.setdefault(path[:depth], number)
    return lines


def line_of(index: dict[tuple[str, ...], int], path: tuple[str, ...]) -> int | None:
    """The line of ``path`` or, failing that, of its nearest enclosing table."""
    for depth in range(len(path), 0, -1):
        if path[:depth] in index:
            return index[path[:depth]]
    return None
