#!/usr/bin/env bash
# Sets up what the tests need on a fresh Debian/Ubuntu machine (as root), then runs
# exactly what CI runs: rustfmt, clippy with -D warnings, and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-debian.sh --tests

# Offline, single-user nix (see shared TESTING.md); the tests also pass this to every
# nix they start, this covers anything run by hand from this shell.
export NIX_CONFIG='experimental-features = nix-command flakes
sandbox = false
substituters =
build-users-group ='

# CI clones afresh each time: keep the build directory outside the clone so a run
# pays the cold build (tauri, sqlx, ...) once per machine. Cargo keeps it correct.
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ "${CI:-}" = "true" ]; then
  export CARGO_TARGET_DIR=/var/cache/bento-ci/target
  mkdir -p "$CARGO_TARGET_DIR"
fi

step() { printf '\n==> %s\n' "$*" >&2; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo build --workspace --all-targets"
cargo build --workspace --all-targets

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test --workspace"
cargo test --workspace
