#!/usr/bin/env bash
# Builds the locale2b guest kernel (uncompressed ELF vmlinux with the PVH note)
# from Debian's linux-source package: `make tinyconfig`, the fragment on top,
# `make olddefconfig`, then `make vmlinux`. Called by `locale2b image build`;
# can be run by hand.
#
# Usage: build-kernel.sh --fragment FILE --out DIR --work DIR
#                        [--source TARBALL] [--jobs N] [--epoch SECONDS]
# Writes DIR/vmlinux (stripped) and DIR/config (the full .config used).
set -euo pipefail

fragment=""
out=""
work=""
source_tar="/usr/src/linux-source-6.1.tar.xz"
jobs=2
epoch="${SOURCE_DATE_EPOCH:-1700000000}"

while [ $# -gt 0 ]; do
    case "$1" in
        --fragment) fragment="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --work) work="$2"; shift 2 ;;
        --source) source_tar="$2"; shift 2 ;;
        --jobs) jobs="$2"; shift 2 ;;
        --epoch) epoch="$2"; shift 2 ;;
        *) echo "build-kernel: unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ -n "$fragment" ] && [ -n "$out" ] && [ -n "$work" ] || {
    echo "usage: build-kernel.sh --fragment FILE --out DIR --work DIR [--source TARBALL] [--jobs N] [--epoch S]" >&2
    exit 2
}
[ -f "$fragment" ] || { echo "build-kernel: fragment not found: $fragment" >&2; exit 1; }
[ -f "$source_tar" ] || { echo "build-kernel: kernel source not found: $source_tar (apt-get install linux-source-6.1)" >&2; exit 1; }

fragment="$(realpath "$fragment")"
mkdir -p "$out" "$work"
out="$(realpath "$out")"
work="$(realpath "$work")"
start=$(date +%s)
step() { echo "kernel: $* (+$(( $(date +%s) - start ))s)"; }

# Fixed build identity so the same inputs give the same vmlinux.
export KBUILD_BUILD_TIMESTAMP
KBUILD_BUILD_TIMESTAMP="$(date -u -d "@$epoch" '+%Y-%m-%d %H:%M:%S UTC')"
export KBUILD_BUILD_USER=locale2b KBUILD_BUILD_HOST=locale2b KBUILD_BUILD_VERSION=1
export ARCH=x86_64 LC_ALL=C TZ=UTC

src="$work/src"
if [ ! -f "$src/.extracted" ]; then
    step "extracting $(basename "$source_tar")"
    rm -rf "$src"
    mkdir -p "$src"
    tar -xJf "$source_tar" -C "$src" --strip-components=1
    touch "$src/.extracted"
fi
cd "$src"

# Two layout-only edits that shrink the ELF file from ~16 MB to ~7 MB without
# changing code: (1) file offsets aligned to 4 KiB instead of 2 MiB (loaders
# place segments by physical address, not by file offset); (2) entry text
# aligned to a page instead of 2 MiB, which only page-table isolation needs
# (the fragment pins CONFIG_PAGE_TABLE_ISOLATION=n). Idempotent.
sed -i 's/-z max-page-size=0x200000/-z max-page-size=0x1000/' arch/x86/Makefile
sed -i 's/^#define ALIGN_ENTRY_TEXT_\(BEGIN\|END\)\t\. = ALIGN(PMD_SIZE);/#define ALIGN_ENTRY_TEXT_\1\t. = ALIGN(PAGE_SIZE);/' \
    arch/x86/kernel/vmlinux.lds.S
grep -q 'max-page-size=0x1000' arch/x86/Makefile &&
    [ "$(grep -cP '^#define ALIGN_ENTRY_TEXT_[A-Z]+\t\. = ALIGN\(PAGE_SIZE\);' arch/x86/kernel/vmlinux.lds.S)" -eq 2 ] || {
    echo "kernel: layout edits did not apply to this source version" >&2
    exit 1
}

step "configuring: tinyconfig + $(basename "$fragment")"
make -s tinyconfig >"$work/config.log" 2>&1
scripts/kconfig/merge_config.sh -m -O . .config "$fragment" >>"$work/config.log" 2>&1
make -s olddefconfig >>"$work/config.log" 2>&1

# Every CONFIG_X=y / =n of the fragment must have survived olddefconfig.
missing=0
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=y)
            grep -qx "$line" .config || { echo "kernel: not enabled after olddefconfig: $line" >&2; missing=1; } ;;
        CONFIG_*=n)
            name="${line%=n}"
            if grep -q "^$name=" .config; then echo "kernel: still enabled: $name" >&2; missing=1; fi ;;
    esac
done <"$fragment"
[ "$missing" -eq 0 ] || { echo "kernel: configuration fragment not satisfied (see above)" >&2; exit 1; }

step "compiling vmlinux with -j$jobs (log: $work/build.log)"
make -j"$jobs" vmlinux >"$work/build.log" 2>&1 &
make_pid=$!
while kill -0 "$make_pid" 2>/dev/null; do
    for _ in $(seq 1 20); do
        kill -0 "$make_pid" 2>/dev/null || break
        sleep 1
    done
    if kill -0 "$make_pid" 2>/dev/null; then
        step "compiling: $(grep -c '^  CC' "$work/build.log" || true) objects so far"
    fi
done
if ! wait "$make_pid"; then
    tail -n 30 "$work/build.log" >&2
    echo "kernel: make vmlinux failed (full log: $work/build.log)" >&2
    exit 1
fi

step "stripping vmlinux"
objcopy --strip-all vmlinux "$out/vmlinux.tmp"
mv "$out/vmlinux.tmp" "$out/vmlinux"
cp .config "$out/config"
make -s kernelrelease >"$out/release"
size=$(stat -c %s "$out/vmlinux")
step "done: $(make -s kernelrelease), vmlinux $size bytes"
[ "$size" -lt 10000000 ] || { echo "kernel: vmlinux is $size bytes, over the 10 MB budget" >&2; exit 1; }
