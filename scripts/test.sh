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

# --no-fail-fast: one failing test binary must not hide the others' results.
step "cargo test --workspace --no-fail-fast"
cargo test --workspace --no-fail-fast

# The README's first command, as a newcomer runs it: scripts/run.sh builds in its
# own target directory (never the tests' binaries above), starts the demo fleet
# and, with --check, exits once every demo host is up to date. The workspace's
# own binaries are removed first, so a build command that forgets one fails here
# even on a machine that built it before; dependencies stay cached.
step "quick start: scripts/run.sh --check"
qs_target="${QUICKSTART_TARGET_DIR:-$(pwd)/target/quickstart}"
if [ "${CI:-}" = "true" ] && [ -z "${QUICKSTART_TARGET_DIR:-}" ]; then
  qs_target=/var/cache/bento-ci/quickstart
fi
mkdir -p "$qs_target"
CARGO_TARGET_DIR="$qs_target" cargo clean --release -p bento -p bento-agent -p bento-tests -p bento-core
qs_dir=$(mktemp -d /tmp/bento-quickstart.XXXXXX)
qs_start=$(date +%s)
CARGO_TARGET_DIR="$qs_target" bash scripts/run.sh --check --dir "$qs_dir/demo" --listen 127.0.0.1:0 --interval 3
echo "quick start: passed in $(( $(date +%s) - qs_start )) s (build included)" >&2
rm -rf "$qs_dir"
