#!/usr/bin/env bash
# Installs every Debian package bento's run and tests need, and configures nix for
# offline single-user use. Idempotent: packages already present are skipped.
# Usage: scripts/setup-debian.sh [--tests]   (as root, or through sudo)
set -euo pipefail

# The demo needs only ssh's client (the agents use it); bento serves SFTP itself.
want=(nix-bin openssh-client sqlite3 ca-certificates build-essential pkg-config)
if [ "${1:-}" = "--tests" ]; then
  # openssh-server: the OpenSSH-mode tests and the benchmarks start their own sshd.
  # rsync: the status tests move a chroot with `rsync -a` as an admin would.
  # python3-aiosmtpd: the SMTP sink the email alert test starts.
  want+=(openssh-server rsync python3-aiosmtpd chromium chromium-driver dbus-daemon dbus xvfb xfce4-panel x11-utils imagemagick
         fonts-dejavu-core fonts-noto-color-emoji dunst wrk hyperfine curl systemd
         libwebkit2gtk-4.1-dev libgtk-3-dev libsoup-3.0-dev)
fi

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

SUDO=()
[ "$(id -u)" -eq 0 ] || SUDO=(sudo)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# sshd needs its privilege-separation directory; the tests start their own sshd.
if [ "${1:-}" = "--tests" ]; then
  "${SUDO[@]}" mkdir -p /run/sshd
fi

# Create nix's state (database, gcroots, profiles) once, here: on a fresh machine
# the first nix commands the tests start in parallel would otherwise race to make
# it ("creating symlink ... gcroots/profiles ...: File exists").
"${SUDO[@]}" env NIX_CONFIG='build-users-group =' nix-store --init
