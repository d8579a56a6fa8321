#!/usr/bin/env bash
# Builds the locale2b guest root filesystem in two cached stages. Called by
# `locale2b image build`; can be run by hand.
#
#   build-rootfs.sh base --suite S --variant V --packages a,b,c --out DIR
#                        [--mirror "deb URI SUITE COMPONENTS"]... [--setup FILE]
#                        [--hostname NAME] [--epoch SECONDS]
#       Debian tree (mmdebstrap, no kernel, no systemd) with user `user`
#       (uid 1000), /workspace, hostname, hosts, resolv.conf placeholder.
#       Does not depend on the agent, so it is cached separately.
#
#   build-rootfs.sh image --base DIR --agent PATH --out FILE --work DIR
#                         --uuid UUID --hash-seed UUID [--headroom-mib N] [--epoch SECONDS]
#       Copies the base tree, installs the agent at /usr/local/bin/locale2b-agent
#       (0755), clamps every mtime and writes a sparse ext4 image with
#       `mkfs.ext4 -d` (no mounting, fixed UUID and hash seed).
set -euo pipefail

usage() { sed -n '2,17p' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
mode="$1"; shift

suite=bookworm
variant=minbase
packages=""
out=""
setup=""
hostname=locale2b
epoch="${SOURCE_DATE_EPOCH:-1700000000}"
mirrors=()
base=""
agent=""
work=""
uuid=""
hash_seed=""
headroom_mib=64

while [ $# -gt 0 ]; do
    case "$1" in
        --suite) suite="$2"; shift 2 ;;
        --variant) variant="$2"; shift 2 ;;
        --packages) packages="$2"; shift 2 ;;
        --mirror) mirrors+=("$2"); shift 2 ;;
        --setup) setup="$2"; shift 2 ;;
        --hostname) hostname="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --epoch) epoch="$2"; shift 2 ;;
        --base) base="$2"; shift 2 ;;
        --agent) agent="$2"; shift 2 ;;
        --work) work="$2"; shift 2 ;;
        --uuid) uuid="$2"; shift 2 ;;
        --hash-seed) hash_seed="$2"; shift 2 ;;
        --headroom-mib) headroom_mib="$2"; shift 2 ;;
        *) echo "build-rootfs: unknown argument: $1" >&2; usage ;;
    esac
done
[ -n "$out" ] || usage

export SOURCE_DATE_EPOCH="$epoch" LC_ALL=C TZ=UTC
start=$(date +%s)
step() { echo "rootfs: $* (+$(( $(date +%s) - start ))s)"; }

# Sets every mtime newer than the epoch to the epoch (symlinks included).
clamp_mtimes() {
    find "$1" -newermt "@$epoch" -print0 | xargs -0r touch --no-dereference --date="@$epoch"
}

build_base() {
    [ ${#mirrors[@]} -gt 0 ] || mirrors=("deb http://deb.debian.org/debian $suite main")
    [ -z "$setup" ] || [ -f "$setup" ] || { echo "build-rootfs: setup script not found: $setup" >&2; exit 1; }
    local tmp="$out.tmp"
    rm -rf "$tmp"
    local hooks=()
    if [ -n "$setup" ]; then
        setup="$(realpath "$setup")"
        # Template setup runs inside the tree with /proc, /sys and /dev mounted.
        hooks+=(--customize-hook="chroot \"\$1\" /bin/sh -eu < '$setup'")
    fi
    step "mmdebstrap $suite ($variant): $packages"
    mmdebstrap --mode=root --format=directory --variant="$variant" \
        --include="$packages" \
        --aptopt='Acquire::Languages "none"' \
        --aptopt='APT::Install-Recommends "false"' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        "${hooks[@]}" \
        "$suite" "$tmp" "${mirrors[@]}"

    step "configuring user, hostname, /workspace"
    grep -q '^user:' "$tmp/etc/passwd" || {
        echo 'user:x:1000:1000:locale2b user:/home/user:/bin/bash' >>"$tmp/etc/passwd"
        echo 'user:x:1000:' >>"$tmp/etc/group"
        echo 'user:!:19000:0:99999:7:::' >>"$tmp/etc/shadow"
        echo 'user:!::' >>"$tmp/etc/gshadow"
    }
    install -d -m 0755 -o 1000 -g 1000 "$tmp/home/user" "$tmp/workspace"
    for f in .bashrc .profile .bash_logout; do
        [ -f "$tmp/etc/skel/$f" ] && install -m 0644 -o 1000 -g 1000 "$tmp/etc/skel/$f" "$tmp/home/user/$f"
    done
    echo "$hostname" >"$tmp/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' "$hostname" >"$tmp/etc/hosts"
    rm -f "$tmp/etc/resolv.conf"
    printf '# locale2b: no network by default; the agent rewrites this file when networking is enabled.\n' >"$tmp/etc/resolv.conf"
    chmod 0644 "$tmp/etc/hostname" "$tmp/etc/hosts" "$tmp/etc/resolv.conf"
    install -d -m 0755 "$tmp/usr/local/bin"

    step "removing logs, caches, machine-id"
    rm -rf "$tmp"/var/cache/apt/* "$tmp"/var/lib/apt/lists/* "$tmp"/var/cache/ldconfig/aux-cache \
        "$tmp"/var/cache/debconf/*-old "$tmp"/var/lib/dpkg/*-old "$tmp"/tmp/* "$tmp"/var/tmp/*
    find "$tmp/var/log" -type f -delete
    : >"$tmp/etc/machine-id"
    rm -f "$tmp/var/lib/dbus/machine-id"
    clamp_mtimes "$tmp"
    rm -rf "$out"
    mv "$tmp" "$out"
    step "base tree ready: $(du -sm "$out" | cut -f1) MiB"
}

build_image() {
    [ -d "$base" ] || { echo "build-rootfs: base tree not found: $base" >&2; exit 1; }
    [ -f "$agent" ] || { echo "build-rootfs: agent binary not found: $agent" >&2; exit 1; }
    [ -n "$work" ] && [ -n "$uuid" ] && [ -n "$hash_seed" ] || usage
    local stage="$work/stage"
    rm -rf "$stage"
    mkdir -p "$work"
    step "copying base tree"
    cp -a --reflink=auto "$base" "$stage"
    install -m 0755 -o 0 -g 0 "$agent" "$stage/usr/local/bin/locale2b-agent"
    # atime and mtime of everything to the epoch (mkfs copies both).
    find "$stage" -exec touch --no-dereference --date="@$epoch" {} +

    local content_kib files size_mib
    content_kib=$(du -sk --apparent-size "$stage" | cut -f1)
    files=$(find "$stage" | wc -l)
    # ext4 metadata plus block rounding of small files: ~25% over the apparent size.
    size_mib=$(( content_kib * 5 / 4 / 1024 + headroom_mib ))
    step "mkfs.ext4 -d: ${size_mib} MiB image, $files inodes used"
    rm -f "$out.tmp"
    truncate -s "${size_mib}M" "$out.tmp"
    E2FSPROGS_FAKE_TIME="$epoch" mkfs.ext4 -q -F -b 4096 -L locale2b-root \
        -N $(( files + 8192 )) -m 0 -O ^has_journal \
        -U "$uuid" -E "hash_seed=$hash_seed,root_owner=0:0" \
        -d "$stage" "$out.tmp"
    # mkfs copies each file's ctime (which cannot be set from userspace) and
    # atime (bumped by relatime while mkfs reads the files): set both to the epoch.
    if (cd "$stage" && find . -printf '%P\n') | grep -q '"'; then
        echo "build-rootfs: a path in the tree contains a double quote; cannot fix its timestamps" >&2
        exit 1
    fi
    (cd "$stage" && find . -printf '%P\n') |
        sed 's|^\(.*\)$|sif "/\1" ctime @'"$epoch"'\nsif "/\1" atime @'"$epoch"'|' >"$work/timestamps.debugfs"
    E2FSPROGS_FAKE_TIME="$epoch" debugfs -w -f "$work/timestamps.debugfs" "$out.tmp" >/dev/null 2>"$work/debugfs.log"
    e2fsck -fn "$out.tmp" >"$work/e2fsck.log" 2>&1 || {
        cat "$work/e2fsck.log" >&2
        echo "build-rootfs: e2fsck found errors in the new image" >&2
        exit 1
    }
    mv "$out.tmp" "$out"
    rm -rf "$stage"
    step "image ready: $(stat -c %s "$out") bytes apparent, $(du -k "$out" | cut -f1) KiB on disk"
}

case "$mode" in
    base) build_base ;;
    image) build_image ;;
    *) usage ;;
esac
