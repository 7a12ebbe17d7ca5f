#!/usr/bin/env bash
# Quick start on a fresh Debian/Ubuntu machine, as root: installs what bento needs,
# builds it, and starts the web panel on a demo fleet (toy NixOS hosts built by the
# real nix, chroots served by bento's own SFTP server, one real bento-agent per host). Ctrl-C stops it.
# Arguments go to the demo (--listen ADDR, --interval SECS, --password PW, --dir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "run.sh: cargo is missing: install a Rust toolchain (rustup, Rust >= 1.89) first" >&2
  exit 1
fi
bash scripts/setup-debian.sh

export NIX_CONFIG='experimental-features = nix-command flakes
sandbox = false
substituters =
build-users-group ='

cargo build --release -p bento -p bento-agent -p bento-tests --bin bento-demo
exec target/release/bento-demo "$@"
