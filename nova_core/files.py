"""Files written whole, for records, indexes and configuration that programs read while
Nova writes them (dnsmasq, conmon, another ``nova``) or after a crash."""

from __future__ import annotations

import os
from pathlib import Path


def replace_file(path: Path, data: str | bytes, *, mode: int | None = None,
                 tmp: Path | None = None) -> None:
    """Write ``path`` whole: a temporary file renamed over it, so a reader or a crash sees
    the old content or the new, never part of either.

    ``mode`` sets the permission bits exactly (umask aside) before a byte is written, so
    a key made with ``mode=0o600`` is never readable by others, not even for a moment.
    ``tmp`` is the temporary file (default ``.NAME.tmp`` beside ``path``): give one
    outside a folder that a program watches (dnsmasq's ``hostsdir``) or globs. It must be
    on the same filesystem. If writing fails, the temporary file is removed and ``path``
    is unchanged.
    """
    tmp = path.with_name(f".{path.name}.tmp") if tmp is None else tmp
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                 0o666 if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)  # also a leftover temporary file's
            handle.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
