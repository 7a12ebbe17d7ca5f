#!/usr/bin/env bash
# Quick start on a fresh Debian/Ubuntu machine, as root: installs what bento needs,
# builds it, and starts the web panel on a demo fleet (toy NixOS hosts built by the
# real nix, chroots served by bento's own SFTP server, one real bento-agent per host). Ctrl-C stops it.
# Arguments go to the demo (--listen ADDR, --interval SECS, --password PW, --dir DIR;
# --check exits once every demo host is up to date: what CI runs).
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

# --bins applies to every -p: bento, bento-agent and bento-demo (a `--bin` would
# restrict all three packages to that one binary).
cargo build --release -p bento -p bento-agent -p bento-tests --bins
# Where cargo put them: CARGO_TARGET_DIR, a config's build.target-dir, or target/.
target_dir=$(cargo metadata --format-version 1 --no-deps |
  grep -o '"target_directory":"[^"]*"' | head -n1 | cut -d'"' -f4)
for b in bento bento-agent bento-demo; do
  [ -x "$target_dir/release/$b" ] || { echo "run.sh: $target_dir/release/$b was not built" >&2; exit 1; }
done
exec "$target_dir/release/bento-demo" "$@"
