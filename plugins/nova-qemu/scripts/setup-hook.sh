#!/usr/bin/env bash
# nova-qemu's part of scripts/setup.sh: a guest kernel for the tests and examples.
# Debian's cloud kernel (virtio and the serial console built in or as modules) is
# downloaded as a package and unpacked, never installed: /var/cache/nova/guest/vmlinuz.
set -euo pipefail
cache="${NOVA_GUEST_CACHE:-/var/cache/nova/guest}"
[ -s "$cache/vmlinuz" ] && [ -s "$cache/modules/virtio_blk.ko" ] && exit 0
mkdir -p "$cache"
work=$(mktemp -d)
chmod 755 "$work"  # apt downloads as _apt
trap 'rm -rf "$work"' EXIT
package=$(apt-cache search --names-only '^linux-image-[0-9.+a-z-]*-cloud-amd64-unsigned$' \
          | awk '{print $1}' | sort -V | tail -1)
[ -n "$package" ] || { echo "setup: no Debian cloud kernel package found (apt-get update?)" >&2; exit 1; }
(cd "$work" && apt-get download -qq "$package" >/dev/null)
dpkg-deb -x "$work"/*.deb "$work/root"
# virtio network and disk drivers, for test guests on Nova networks and with disks
mkdir -p "$cache/modules"
for module in failover net_failover virtio_net virtio_blk; do
    found=$(find "$work/root/lib/modules" -name "$module.ko*" | head -1)
    [ -n "$found" ] || { echo "setup: $module not in $package" >&2; exit 1; }
    case "$found" in
        *.xz) xz -dc "$found" > "$cache/modules/$module.ko" ;;
        *.zst) zstd -qdc "$found" > "$cache/modules/$module.ko" ;;
        *) cp "$found" "$cache/modules/$module.ko" ;;
    esac
done
cp "$(ls "$work"/root/boot/vmlinuz-* | head -1)" "$cache/vmlinuz.tmp"
mv "$cache/vmlinuz.tmp" "$cache/vmlinuz"
echo "setup: guest kernel for VM tests in $cache/vmlinuz (from $package)"
