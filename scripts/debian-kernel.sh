#!/usr/bin/env bash
# Makes the guest kernel from Debian's prebuilt kernel package instead of
# compiling one: downloads the package (apt, no other source), extracts the
# ELF vmlinux from its bzImage, and writes a small initramfs that loads the
# virtio, vsock, overlay and network modules with busybox (static, also a
# Debian package), mounts the root disk read-only and switches to the
# kernel command line's init=. Takes seconds; the compiled minimal kernel
# (build-kernel.sh) boots faster and needs no initramfs. Called by
# `locale2b image build --kernel debian`; can be run by hand.
#
# Usage: debian-kernel.sh --package PKG --version VER --busybox-version VER
#                         --out DIR --work DIR [--epoch SECONDS]
# Writes DIR/vmlinux, DIR/initrd (uncompressed newc cpio), DIR/config,
# DIR/release and DIR/modules (the modules the initramfs loads, in order).
set -euo pipefail

package=""
version=""
busybox_version=""
out=""
work=""
epoch="${SOURCE_DATE_EPOCH:-1700000000}"
# What a sandbox needs that Debian builds as modules, by name; modprobe
# resolves their dependencies and order.
modules=(virtio_mmio virtio_blk virtio_console virtio_rng vmw_vsock_virtio_transport overlay virtio_net fuse)

while [ $# -gt 0 ]; do
    case "$1" in
        --package) package="$2"; shift 2 ;;
        --version) version="$2"; shift 2 ;;
        --busybox-version) busybox_version="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --work) work="$2"; shift 2 ;;
        --epoch) epoch="$2"; shift 2 ;;
        *) echo "debian-kernel: unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ -n "$package" ] && [ -n "$version" ] && [ -n "$busybox_version" ] && [ -n "$out" ] && [ -n "$work" ] || {
    echo "usage: debian-kernel.sh --package PKG --version VER --busybox-version VER --out DIR --work DIR [--epoch S]" >&2
    exit 2
}
for tool in apt-get apt-cache dpkg-deb depmod modprobe cpio od dd; do
    command -v "$tool" >/dev/null || { echo "debian-kernel: $tool is missing (run scripts/setup.sh)" >&2; exit 1; }
done

mkdir -p "$out" "$work"
out="$(realpath "$out")"
work="$(realpath "$work")"
start=$(date +%s)
step() { echo "kernel: $* (+$(( $(date +%s) - start ))s)"; }

# The meta package (linux-image-cloud-amd64) names the versioned one.
dl="$work/download"
rm -rf "$dl" "$work/pkg" "$work/bb" "$work/initrd"
mkdir -p "$dl"
image_pkg="$package"
if [[ "$package" != linux-image-[0-9]* ]]; then
    image_pkg=$(apt-cache depends "$package=$version" 2>/dev/null |
        sed -nE 's/^ *Depends: (linux-image-[0-9][^ ]*).*/\1/p' | head -n1)
    [ -n "$image_pkg" ] || {
        echo "debian-kernel: cannot resolve $package=$version to a kernel package (apt-get update?)" >&2
        exit 1
    }
fi
step "downloading $image_pkg ($version) and busybox-static ($busybox_version) with apt"
(cd "$dl" && apt-get download -q -o APT::Sandbox::User=root \
    "$image_pkg=$version" "busybox-static=$busybox_version") >"$work/download.log" 2>&1 || {
    tail -5 "$work/download.log" >&2
    echo "debian-kernel: apt-get download failed (log: $work/download.log)" >&2
    exit 1
}
dpkg-deb -x "$dl"/linux-image-*.deb "$work/pkg"
dpkg-deb -x "$dl"/busybox-static_*.deb "$work/bb"
release=$(ls "$work/pkg/lib/modules")
[ "$(echo "$release" | wc -l)" -eq 1 ] || { echo "debian-kernel: expected one module tree, found: $release" >&2; exit 1; }
bzimage="$work/pkg/boot/vmlinuz-$release"

# The bzImage's setup header says where the compressed kernel is
# (Documentation/arch/x86/boot.rst: setup_sects at 0x1f1, payload_offset
# and payload_length at 0x248/0x24c, relative to the protected-mode code).
step "extracting vmlinux from $(basename "$bzimage")"
le32() { od -An -t u4 -j "$1" -N 4 "$bzimage" | tr -d ' '; }
setup_sects=$(od -An -t u1 -j $((0x1f1)) -N 1 "$bzimage" | tr -d ' ')
[ "$setup_sects" -eq 0 ] && setup_sects=4
payload_start=$(( (setup_sects + 1) * 512 + $(le32 $((0x248))) ))
payload_len=$(le32 $((0x24c)))
dd if="$bzimage" of="$work/payload" bs=4M iflag=skip_bytes,count_bytes \
    skip="$payload_start" count="$payload_len" status=none
magic=$(od -An -t x1 -N 4 "$work/payload" | tr -d ' ')
case "$magic" in
    02214c18) lz4 -dc "$work/payload" >"$work/vmlinux" 2>/dev/null || true ;;
    1f8b*) gzip -dc "$work/payload" >"$work/vmlinux" 2>/dev/null || true ;;
    fd377a58) xz -dc "$work/payload" >"$work/vmlinux" 2>/dev/null || true ;;
    28b52ffd) zstd -dcq "$work/payload" >"$work/vmlinux" 2>/dev/null || true ;;
    *) echo "debian-kernel: unknown kernel compression (magic $magic)" >&2; exit 1 ;;
esac
[ "$(od -An -t x1 -N 4 "$work/vmlinux" | tr -d ' ')" = 7f454c46 ] || {
    echo "debian-kernel: the extracted kernel is not an ELF file (compression $magic)" >&2
    exit 1
}

step "initramfs: ${modules[*]}"
depmod -b "$work/pkg" "$release"
root="$work/initrd"
mkdir -p "$root"/{bin,dev,proc,newroot,lib/modules}
cp "$work/bb/bin/busybox" "$root/bin/busybox"
: >"$root/modules"
for m in "${modules[@]}"; do
    modprobe -d "$work/pkg" -S "$release" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'
done | awk '!seen[$0]++' | while read -r ko; do
    cp "$ko" "$root/lib/modules/"
    basename "$ko" >>"$root/modules"
done
cat >"$root/init" <<'INIT'
#!/bin/busybox sh
# locale2b initramfs: load the modules in /modules, mount root= read-only
# and switch to init= (both from the kernel command line).
B=/bin/busybox
fail() { echo "initramfs: $*" >/dev/console; $B sleep 1; $B reboot -f; }
$B mount -t proc proc /proc
$B mount -t devtmpfs -o mode=0755 devtmpfs /dev
while read -r m; do
  $B insmod "/lib/modules/$m" || echo "initramfs: insmod $m failed" >/dev/console
done </modules
root=/dev/vda; init=/sbin/init; fstype=ext4
for a in $($B cat /proc/cmdline); do
  case "$a" in
    root=*) root=${a#root=} ;;
    init=*) init=${a#init=} ;;
    rootfstype=*) fstype=${a#rootfstype=} ;;
  esac
done
n=0
while [ ! -b "$root" ]; do
  n=$((n + 1)); [ "$n" -le 1000 ] || fail "$root did not appear"
  $B usleep 10000
done
$B mount -t "$fstype" -o ro "$root" /newroot || fail "cannot mount $root"
$B umount /dev
$B umount /proc
exec $B switch_root /newroot "$init"
INIT
chmod 0755 "$root/init"
find "$root" -exec touch -h -d "@$epoch" {} +
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) >"$out/initrd"

# Stripped of nothing: Debian's vmlinux is already stripped.
cp "$work/vmlinux" "$out/vmlinux"
cp "$work/pkg/boot/config-$release" "$out/config"
cp "$root/modules" "$out/modules"
echo "$release" >"$out/release"
rm -rf "$dl" "$work/pkg" "$work/bb" "$root" "$work/payload" "$work/vmlinux"
step "done: $release, vmlinux $(du -h "$out/vmlinux" | cut -f1), initrd $(du -h "$out/initrd" | cut -f1), $(wc -l <"$out/modules") modules"
