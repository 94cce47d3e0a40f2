#!/usr/bin/env bash
# nova-qemu's part of scripts/setup.sh: a guest kernel for the tests and examples.
# Debian's cloud kernel (virtio and the serial console built in or as modules) is
# downloaded as a package and unpacked, never installed: /var/cache/nova/guest/vmlinuz.
set -euo pipefail
cache="${NOVA_GUEST_CACHE:-/var/cache/nova/guest}"
[ -s "$cache/vmlinuz" ] && exit 0
mkdir -p "$cache"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
package=$(apt-cache search --names-only '^linux-image-[0-9.+a-z-]*-cloud-amd64-unsigned$' \
          | awk '{print $1}' | sort -V | tail -1)
[ -n "$package" ] || { echo "setup: no Debian cloud kernel package found (apt-get update?)" >&2; exit 1; }
(cd "$work" && apt-get download -qq "$package" >/dev/null)
dpkg-deb -x "$work"/*.deb "$work/root"
cp "$(ls "$work"/root/boot/vmlinuz-* | head -1)" "$cache/vmlinuz.tmp"
mv "$cache/vmlinuz.tmp" "$cache/vmlinuz"
echo "setup: guest kernel for VM tests in $cache/vmlinuz (from $package)"
