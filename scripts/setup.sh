#!/usr/bin/env bash
# Prepares a Debian 12 host for locale2b. Idempotent: re-running it when
# everything is in place changes nothing and prints a short summary.
#
# Usage: scripts/setup.sh [--kernel-build]
#   --kernel-build          also the packages that compiling the minimal guest
#                           kernel needs (`locale2b image build --kernel build`;
#                           the test suite does); without it, images use
#                           Debian's prebuilt kernel until that is built
#   LOCALE2B_BASE_DIR       base directory (default /var/lib/firecracker-workspaces)
#   LOCALE2B_FIRECRACKER_BIN  firecracker binary whose version is recorded
# Nothing is downloaded except Debian packages through apt.
set -euo pipefail

base="${LOCALE2B_BASE_DIR:-/var/lib/firecracker-workspaces}"
kernel_build=0
for arg in "$@"; do
    case "$arg" in
        --kernel-build) kernel_build=1 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "setup: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

# Host packages: the VMM, the rootfs tools, what unpacks Debian's kernel
# (kmod, cpio, lz4) and the Python client's needs.
packages=(
    qemu-system-x86 mmdebstrap e2fsprogs cpio kmod lz4 xz-utils zstd
    iproute2 nftables python3 python3-venv python3-pip ca-certificates curl procps
)
# Compiling the minimal guest kernel.
if [ "$kernel_build" -eq 1 ]; then
    packages+=(linux-source-6.1 bc bison flex libelf-dev libssl-dev build-essential)
fi
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || { echo "setup: run as root to install: ${missing[*]}" >&2; exit 1; }
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    echo "setup: host packages present (${#packages[@]})"
fi

# Accelerator: the real probe (can a guest run under KVM?) is done by the server.
if [ -e /dev/kvm ]; then
    echo "setup: KVM device present; the server probes at start whether guests really run under it (nested PVM hosts cannot), otherwise TCG"
else
    echo "setup: no /dev/kvm: guests will run under QEMU TCG (software emulation, slower)"
fi

# The unprivileged user the server runs as in a deployment
# (docs/deployment.md) and in the test suite's unprivileged runs: a system
# user with its own group, no login, no home; in the kvm group when there
# is one (Debian gives /dev/kvm to it).
if ! id -u locale2b >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --comment "locale2b sandbox server" locale2b
        echo "setup: created the system user locale2b"
    else
        echo "setup: no user locale2b (run as root to create it)" >&2
    fi
fi
if id -u locale2b >/dev/null 2>&1 && getent group kvm >/dev/null \
    && ! id -nG locale2b | tr ' ' '\n' | grep -qx kvm; then
    usermod -a -G kvm locale2b
    echo "setup: added locale2b to the kvm group"
fi

# Base directory layout, private to the service user.
for d in "$base" "$base/images" "$base/cache" "$base/sandboxes" "$base/workspaces"; do
    if [ ! -d "$d" ]; then
        install -d -m 0700 "$d"
        echo "setup: created $d"
    elif [ "$(stat -c %a "$d")" != 700 ]; then
        chmod 0700 "$d"
        echo "setup: set mode 0700 on $d"
    fi
done

# Firecracker: record the version of the configured binary.
fc_version_file="$base/firecracker-version"
if [ -n "${LOCALE2B_FIRECRACKER_BIN:-}" ]; then
    if [ -x "$LOCALE2B_FIRECRACKER_BIN" ]; then
        version="$("$LOCALE2B_FIRECRACKER_BIN" --version 2>/dev/null | head -n1 || true)"
        if [ -n "$version" ] && [ "$(cat "$fc_version_file" 2>/dev/null || true)" != "$version" ]; then
            printf '%s\n' "$version" >"$fc_version_file"
            echo "setup: recorded $version in $fc_version_file"
        fi
    else
        echo "setup: LOCALE2B_FIRECRACKER_BIN=$LOCALE2B_FIRECRACKER_BIN is not an executable" >&2
    fi
fi

if [ -z "${LOCALE2B_FIRECRACKER_BIN:-}" ] && ! command -v firecracker >/dev/null 2>&1; then
    echo "setup: no Firecracker binary: the qemu backend is used (install Firecracker and its jailer yourself and set LOCALE2B_FIRECRACKER_BIN to use it)"
fi

if [ -f "$base/images/default/manifest.json" ]; then
    echo "setup: guest image installed at $base/images/default"
else
    echo "setup: no guest image yet: run \`locale2b image build\`"
fi
