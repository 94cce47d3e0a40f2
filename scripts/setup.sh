#!/usr/bin/env bash
# Set up Nova on a Debian machine: system packages, a virtual environment in .venv,
# nova-core and every plugin (editable), plus the test tools.
#
#   bash scripts/setup.sh            # from the repository's root
#
# Each plugin lists the Debian packages it needs in plugins/<name>/debian-packages.txt,
# may name optional Python features to install in plugins/<name>/pip-extras.txt, and may
# add a step of its own in plugins/<name>/scripts/setup-hook.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: run as root, or install sudo" >&2; exit 1; }
    SUDO="sudo"
fi

# gcc and libc6-dev build nova's compiled client (scripts/build-client.sh)
packages="python3 python3-venv python3-pip gcc libc6-dev"
for list in plugins/*/debian-packages.txt; do
    [ -f "$list" ] && packages="$packages $(tr '\n' ' ' < "$list")"
done
missing=""
for pkg in $packages; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    echo "setup: installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

for hook in plugins/*/scripts/setup-hook.sh; do
    # a plugin's own setup step (nova-qemu: a guest kernel for its tests), as root
    [ -f "$hook" ] && $SUDO bash "$hook"
done

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
echo "setup: installing nova-core and plugins into .venv"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# compat: plain path entries in .pth files rather than import hooks, which cost every
# nova command about 25 ms at start-up (setuptools calls the mode transitional: if a
# later setuptools drops it, the default mode is used)
editable=(--config-settings editable_mode=compat)
pip_install() {
    PYTHONWARNINGS="ignore:Compat editable installs" .venv/bin/python -m pip install -q "${editable[@]}" "$@" \
        || { editable=(); .venv/bin/python -m pip install -q "$@"; }
}
pip_install -e '.[test]'
plugin_args=()
for plugin in plugins/*/; do
    plugin="${plugin%/}"
    # a plugin's optional features to install too (nova-qemu: libvirt), one word per line
    extras=""
    [ -f "$plugin/pip-extras.txt" ] && extras=$(tr -s ' \n' ',,' < "$plugin/pip-extras.txt" | sed 's/^,//; s/,$//')
    plugin_args+=(-e "./$plugin${extras:+[$extras]}")
done
pip_install "${plugin_args[@]}"
# python3.11's venv brings setuptools, whose distutils-precedence.pth makes every Python
# start in .venv import _distutils_hack: about 1 ms of each nova command. Nothing here
# needs it (pip builds in isolated environments with their own setuptools); the venvs
# of Python 3.12 and later have none.
.venv/bin/python -m pip uninstall -q -y setuptools >/dev/null 2>&1 || true
# a compiled `nova` that hands commands to the warm helper without starting Python
# (docs/architecture.md, "The compiled client"); pip's script stays as .venv/bin/nova-python
if bash scripts/build-client.sh .venv; then
    echo "setup: built the compiled client .venv/bin/nova"
else
    echo "setup: the compiled client was not built; .venv/bin/nova is the Python script (slower to start)" >&2
fi
if [ -x /bin/busybox ] && .venv/bin/python -c "import nova_capsule" 2>/dev/null; then
    # a small local image for examples/quickstart: no registry needed
    if ! .venv/bin/nova image ls 2>/dev/null | grep -q "^local/busybox:latest "; then
        tarball=$(mktemp --suffix=.tar.gz)
        .venv/bin/python -c "import sys; from nova_capsule.testing import busybox_layer; open(sys.argv[1], 'wb').write(busybox_layer())" "$tarball"
        .venv/bin/nova image import "$tarball" local/busybox >/dev/null
        rm -f "$tarball"
        echo "setup: imported image local/busybox:latest (from busybox-static)"
    fi
fi
echo "setup: done. $(.venv/bin/nova --version); try: .venv/bin/nova doctor"
