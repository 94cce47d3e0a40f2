"""Extract an image layer (tar or tar+gzip) into a folder usable as an overlay lower dir.

OCI whiteouts become overlayfs ones: ``.wh.NAME`` a 0/0 character device
``NAME``, ``.wh..wh..opq`` the ``trusted.overlay.opaque=y`` attribute on its
folder. Ownership, modes (setuid included), times, device nodes, hard links and
extended attributes are kept. Member paths are checked so that nothing is
written outside the layer's folder: absolute paths and ``..`` are refused, and
so is any path that would pass through a symbolic link.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from pathlib import Path, PurePosixPath

from nova_core.errors import NovaError

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"


class LayerError(NovaError):
    """A layer that cannot be extracted safely."""


def _clean_name(name: str, layer: str) -> tuple[str, ...]:
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".", "/")]
    if name.startswith("/") and not parts:
        return ()
    if any(p == ".." for p in parts):
        raise LayerError(f"layer {layer} has a member outside its root: {name!r}")
    return tuple(parts)


def _safe_dir(root: Path, parts: tuple[str, ...], layer: str) -> Path:
    """The folder ``root/parts``, made if missing; never through a symbolic link."""
    current = root
    for part in parts:
        current = current / part
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            os.mkdir(current, 0o755)
            continue
        if stat.S_ISLNK(info.st_mode):
            raise LayerError(f"layer {layer} writes through a symbolic link at "
                             f"{'/'.join(parts)}: refused")
        if not stat.S_ISDIR(info.st_mode):
            os.unlink(current)
            os.mkdir(current, 0o755)
    return current


def _remove(path: Path) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def extract_layer(blob: Path, target: Path, name: str = "") -> None:
    """Extract ``blob`` into ``target`` (made atomically: a failed extraction leaves nothing)."""
    layer = name or blob.name
    partial = target.with_name(target.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    directories: list[tuple[Path, tarfile.TarInfo]] = []
    plain = partial.with_name(target.name + ".tar")
    try:
        if _is_zstd(blob):
            _unzstd(blob, plain, layer)
            blob = plain
        try:
            archive = tarfile.open(blob, "r:*")
        except tarfile.TarError as error:
            raise LayerError(f"layer {layer} is not a tar archive (or uses a compression "
                             f"Nova does not read): {error}") from error
        with archive:
            for member in archive:
                _extract_member(archive, member, partial, layer, directories)
        for path, member in reversed(directories):
            _apply_directory_metadata(partial, path, member)
        os.rename(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        plain.unlink(missing_ok=True)


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _is_zstd(blob: Path) -> bool:
    with open(blob, "rb") as handle:
        return handle.read(4) == ZSTD_MAGIC


def _unzstd(blob: Path, target: Path, layer: str) -> None:
    """Decompress a zstd layer with the ``zstd`` tool (Python 3.11 has no zstd module)."""
    import subprocess

    try:
        done = subprocess.run(["zstd", "-q", "-d", "-f", "-o", str(target), str(blob)],
                              capture_output=True, text=True)
    except FileNotFoundError:
        raise LayerError(f"layer {layer} is zstd-compressed and the zstd tool is not installed",
                         hint="apt-get install zstd") from None
    if done.returncode != 0:
        raise LayerError(f"layer {layer}: zstd could not decompress it: {done.stderr.strip()}")


def _extract_member(archive: tarfile.TarFile, member: tarfile.TarInfo, root: Path, layer: str,
                    directories: list[tuple[Path, tarfile.TarInfo]]) -> None:
    parts = _clean_name(member.name, layer)
    if not parts:
        if member.isdir():
            directories.append((root, member))
        return
    parent = _safe_dir(root, parts[:-1], layer)
    base = parts[-1]
    if base == OPAQUE_MARKER:
        os.setxattr(parent, "trusted.overlay.opaque", b"y")
        return
    if base.startswith(WHITEOUT_PREFIX):
        name = base[len(WHITEOUT_PREFIX):]
        if name in ("", ".", "..") or name.startswith(WHITEOUT_PREFIX):
            raise LayerError(f"layer {layer} has an invalid whiteout {member.name!r}")
        hidden = parent / name
        _remove(hidden)
        os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        return
    path = parent / base
    if member.isdir():
        if os.path.lexists(path) and not path.is_dir() or path.is_symlink():
            _remove(path)
        path.mkdir(exist_ok=True)
        directories.append((path, member))
        return
    _remove(path)
    if member.isreg():
        source = archive.extractfile(member)
        assert source is not None
        with source, open(path, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    elif member.issym():
        os.symlink(member.linkname, path)
    elif member.islnk():
        link_parts = _clean_name(member.linkname, layer)
        if not link_parts:
            raise LayerError(f"layer {layer}: hard link {member.name!r} has no target")
        source_path = _safe_dir(root, link_parts[:-1], layer) / link_parts[-1]
        try:
            info = os.lstat(source_path)
        except FileNotFoundError:
            raise LayerError(f"layer {layer}: hard link {member.name!r} points at "
                             f"{member.linkname!r}, which the layer does not have") from None
        if stat.S_ISDIR(info.st_mode):
            raise LayerError(f"layer {layer}: hard link {member.name!r} points at a folder")
        os.link(source_path, path, follow_symlinks=False)
        return
    elif member.ischr() or member.isblk():
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
        os.mknod(path, kind | (member.mode & 0o7777),
                 os.makedev(member.devmajor, member.devminor))
    elif member.isfifo():
        os.mkfifo(path, member.mode & 0o7777)
    else:
        return
    _apply_metadata(path, member)


def _apply_directory_metadata(root: Path, path: Path, member: tarfile.TarInfo) -> None:
    """Set a folder's metadata at the end, unless a later member replaced it (or a parent)
    with something else: never through a symbolic link."""
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(info.st_mode):
            return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fchown(fd, member.uid, member.gid)
        os.fchmod(fd, member.mode & 0o7777)
        _set_xattrs(path, member)
        os.utime(fd, (member.mtime, member.mtime))
    finally:
        os.close(fd)


def _set_xattrs(path: Path, member: tarfile.TarInfo) -> None:
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            try:
                os.setxattr(path, key[len("SCHILY.xattr."):],
                            value.encode("utf-8", "surrogateescape"), follow_symlinks=False)
            except OSError:
                pass  # an attribute this filesystem does not take (e.g. security.* labels)


def _apply_metadata(path: Path, member: tarfile.TarInfo) -> None:
    """Metadata of a member just made at ``path`` (its parents were checked: no symlinks)."""
    os.lchown(path, member.uid, member.gid)
    if not member.issym():
        os.chmod(path, member.mode & 0o7777, follow_symlinks=False)
    _set_xattrs(path, member)
    os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
