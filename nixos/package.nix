# The bento packages, built from this repository's Cargo workspace:
#
#   callPackage ./package.nix { }                             bento (command and web panel)
#   callPackage ./package.nix { component = "bento-agent"; }  bento-agent
#   callPackage ./package.nix { component = "bento-tray"; }   bento-tray and its details window
#
# One derivation per binary crate, so that a server's or a host's closure
# holds no GTK or WebKit.
{
  lib,
  rustPlatform,
  pkg-config,
  wrapGAppsHook3,
  glib,
  gtk3,
  webkitgtk_4_1,
  libsoup_3,
  dbus,
  component ? "bento",
}:
let
  components = {
    bento = {
      description = "Pull-based deployment for fleets of NixOS machines: the admin command and web panel";
      mainProgram = "bento";
    };
    bento-agent = {
      description = "Keeps a NixOS host on the release its bento server published";
      mainProgram = "bento-agent";
    };
    bento-tray = {
      description = "Tray icon, notifications and details window for a bento workstation";
      mainProgram = "bento-tray";
    };
  };
  info =
    components.${component}
      or (throw "bento: component must be one of ${lib.concatStringsSep ", " (lib.attrNames components)}, not ${component}");
  isTray = component == "bento-tray";

  # The workspace's rust-version: the strictest rust-version of the crates in
  # Cargo.lock is no higher (tests/tests/nixos_files.rs checks), and it is the
  # rustc of the oldest supported NixOS release, 25.11 (1.91), so that the
  # modules build their packages with the host's own nixpkgs.
  minRust = (lib.importTOML ../Cargo.toml).workspace.package.rust-version;
  rustc = rustPlatform.rust.rustc or null;
in
assert lib.assertMsg (rustc == null || lib.versionAtLeast rustc.version minRust) ''
  bento needs rustc ${minRust} or newer (crates in its Cargo.lock do), but this
  nixpkgs has ${rustc.version}. Use a newer nixpkgs, or give a rustPlatform made
  with a newer toolchain: callPackage ./nixos/package.nix { rustPlatform = ...; }
'';
rustPlatform.buildRustPackage {
  pname = component;
  version = (lib.importTOML ../Cargo.toml).workspace.package.version;

  src = (import ./source.nix { inherit lib; }).workspace;
  cargoLock.lockFile = ../Cargo.lock;
  cargoBuildFlags = [
    "--package"
    component
  ];
  # What `tauri build` adds: the window loads the bundled dist/ through the
  # tauri:// protocol instead of a development server.
  buildFeatures = lib.optionals isTray [ "tauri/custom-protocol" ];

  # The workspace's tests are end-to-end: they need root, a real sshd, nix with
  # a daemon and D-Bus sessions, none of which a build sandbox has. CI runs
  # them (scripts/test.sh); the VM test (nixos/tests/vm.nix) runs the binaries.
  doCheck = false;

  # The details window is a tauri (GTK + WebKitGTK) program; the tray icon
  # itself only speaks D-Bus (libdbus). Nothing in Cargo.lock links OpenSSL.
  nativeBuildInputs = lib.optionals isTray [
    pkg-config
    wrapGAppsHook3
  ];
  buildInputs = lib.optionals isTray [
    glib
    gtk3
    webkitgtk_4_1
    libsoup_3
    dbus
  ];

  # Kept out of etc/xdg/autostart and share/systemd: installing the package must
  # not start the tray by itself (the NixOS module chooses one way, not both).
  postInstall = lib.optionalString isTray ''
    install -Dm644 tray/data/bento-tray.desktop $out/share/bento-tray/bento-tray.desktop
    substituteInPlace $out/share/bento-tray/bento-tray.desktop \
      --replace-fail "Exec=bento-tray" "Exec=$out/bin/bento-tray"
    install -Dm644 tray/data/bento-tray.service $out/share/bento-tray/bento-tray.service
    substituteInPlace $out/share/bento-tray/bento-tray.service \
      --replace-fail /run/current-system/sw/bin/bento-tray $out/bin/bento-tray
  '';

  meta = {
    inherit (info) description mainProgram;
    license = lib.licenses.bsd2;
    platforms = lib.platforms.linux;
  };
}
