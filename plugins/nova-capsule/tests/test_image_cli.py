"""``nova image`` end to end through the real CLI and the local registry."""

from __future__ import annotations

import json
from pathlib import Path

from nova_capsule.testing import busybox_layer


def test_pull_ls_import_rm(run_nova, capsule_home: Path, registry, tmp_path: Path) -> None:
    pulled = run_nova("image", "pull", "test/busybox:1")
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.startswith(f"{registry.address}/test/busybox:1: sha256:")
    again = run_nova("image", "pull", "bolt://test/busybox:multi")
    assert again.returncode == 0, again.stderr
    rootfs = tmp_path / "rootfs.tar.gz"
    rootfs.write_bytes(busybox_layer())
    imported = run_nova("image", "import", str(rootfs), "local/mine")
    assert imported.returncode == 0 and imported.stdout.startswith("local/mine:latest:")
    listing = json.loads(run_nova("image", "ls", "--json", check=True).stdout)
    names = {i["name"] for i in listing}
    assert names == {"local/mine:latest", f"{registry.address}/test/busybox:1",
                     f"{registry.address}/test/busybox:multi"}
    assert len({layer for i in listing for layer in i["layers"]}) == 1  # shared
    removed = run_nova("image", "rm", "test/busybox:1")  # :multi shares everything it has
    assert removed.returncode == 0 and removed.stdout.endswith("(0 blobs freed)\n")
    layer = capsule_home / "drivers/capsule/images/layers" / listing[0]["layers"][0][7:]
    multi = run_nova("image", "rm", "test/busybox:multi")  # its manifest and config go
    assert multi.returncode == 0 and "(2 blobs freed)" in multi.stdout
    assert layer.is_dir()  # local/mine still uses the layer
    missing = run_nova("image", "rm", "test/busybox:1")
    assert missing.returncode == 1 and "no image test/busybox:1" in missing.stderr
    table = run_nova("image", "ls", check=True).stdout
    assert "local/mine:latest" in table and "NAME" in table


def test_pull_errors_are_one_line_with_a_fix(run_nova, capsule_home: Path) -> None:
    unknown = run_nova("image", "pull", "test/nope:1")
    assert unknown.returncode == 1 and "not found in registry" in unknown.stderr
    bad = run_nova("image", "pull", "UPPER")
    assert bad.returncode == 1 and "is not a repository name" in bad.stderr
    for done in (unknown, bad):
        assert "Traceback" not in done.stderr
