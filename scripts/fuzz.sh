#!/usr/bin/env bash
# Fuzzes the protocol frame decoder and request parser for N seconds
# (default 60). Installs cargo-fuzz from crates.io when missing; needs the
# nightly toolchain that ships with the machine image.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN="${1:-60}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (crates.io)"
  cargo install --locked cargo-fuzz
fi
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "error: the nightly toolchain is missing (cargo fuzz needs it)" >&2
  exit 1
fi
mkdir -p fuzz/corpus/frame_decoder
cargo +nightly fuzz run frame_decoder -- -max_total_time="$SECONDS_TO_RUN" -rss_limit_mb=2048
