#!/usr/bin/env bash
# Installs locale2b as a hardened systemd service running as the
# unprivileged user locale2b (docs/deployment.md). Idempotent; run as root
# from a checkout.
#
#   scripts/install-service.sh            # install (and start when systemd runs)
#   scripts/install-service.sh --check    # only print the unit's security score
#
# Installs /usr/local/bin/locale2b, /etc/systemd/system/locale2b.service,
# /etc/locale2b/locale2b.env (settings, LOCALE2B_* variables) and
# /etc/locale2b/keys (API keys, hashes only; an admin key is made and
# printed once when the file is new). The base directory
# (/var/lib/firecracker-workspaces) is given to locale2b.
set -euo pipefail
cd "$(dirname "$0")/.."
UNIT=deploy/systemd/locale2b.service
BASE=/var/lib/firecracker-workspaces
ETC=/etc/locale2b

score() {
  if command -v systemd-analyze >/dev/null; then
    systemd-analyze security --offline=true "$1" 2>/dev/null | tail -1
  else
    echo "(systemd-analyze not installed: no score)"
  fi
}
if [ "${1:-}" = "--check" ]; then score "$UNIT"; exit 0; fi
[ "$(id -u)" -eq 0 ] || { echo "install-service: run as root" >&2; exit 1; }

./scripts/setup.sh
cargo build --release -p locale2b -p locale2b-agent
install -m 0755 target/release/locale2b /usr/local/bin/locale2b.new
mv -f /usr/local/bin/locale2b.new /usr/local/bin/locale2b
echo "install-service: /usr/local/bin/locale2b ($(/usr/local/bin/locale2b --version))"
if [ ! -f "$BASE/images/default/vmlinux" ]; then
  LOCALE2B_BASE_DIR="$BASE" /usr/local/bin/locale2b image build
fi

install -d -m 0750 -o root -g locale2b "$ETC"
if [ ! -f "$ETC/locale2b.env" ]; then
  install -m 0640 -o root -g locale2b /dev/null "$ETC/locale2b.env"
  cat >"$ETC/locale2b.env" <<ENV
# locale2b settings (docs/configuration.md lists every LOCALE2B_* variable).
LOCALE2B_API_KEYS_FILE=$ETC/keys
LOCALE2B_HOST=127.0.0.1
LOCALE2B_PORT=8080
# LOCALE2B_KEY_MAX_SANDBOXES=10
# LOCALE2B_KEY_MAX_MEMORY_MB=8192
ENV
  echo "install-service: wrote $ETC/locale2b.env"
fi
if [ ! -f "$ETC/keys" ]; then
  install -m 0640 -o root -g locale2b /dev/null "$ETC/keys"
  echo "# API keys: name:sha256:<hash> [admin=true] [max_sandboxes=N] [max_memory_mb=N]" >"$ETC/keys"
  key=$(/usr/local/bin/locale2b key new admin --admin --file "$ETC/keys" 2>/dev/null)
  echo "install-service: made the admin API key (shown once, only its hash is stored in $ETC/keys):"
  echo "  $key"
fi

# Readable by the server's group, writable by root only.
chown root:locale2b "$ETC/keys" "$ETC/locale2b.env"
chmod 0640 "$ETC/keys" "$ETC/locale2b.env"

# The base dir belongs to the service user; nothing else may read it. The
# image build cache keeps its owners: its Debian trees must stay root's
# (their files become the guest's, setuid sudo included).
chown locale2b:locale2b "$BASE"
find "$BASE" -mindepth 1 -maxdepth 1 ! -name cache -exec chown -R locale2b:locale2b {} +
[ ! -d "$BASE/cache" ] || chown locale2b:locale2b "$BASE/cache"
chmod 0700 "$BASE"

install -m 0644 "$UNIT" /etc/systemd/system/locale2b.service
echo "install-service: /etc/systemd/system/locale2b.service; security exposure: $(score /etc/systemd/system/locale2b.service)"
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable locale2b.service
  systemctl restart locale2b.service
  systemctl --no-pager --lines=5 status locale2b.service || true
  echo "install-service: logs: journalctl -u locale2b -f"
else
  echo "install-service: systemd is not running on this machine: the unit is installed but not started."
  echo "  Run the server by hand as locale2b:"
  echo "  setpriv --reuid=locale2b --regid=locale2b --init-groups -- env \$(grep -v '^#' $ETC/locale2b.env | xargs) /usr/local/bin/locale2b serve"
fi
