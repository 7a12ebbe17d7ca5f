# The repository's files that builds read, as store paths named "source"
# (content-addressed: the same files give the same path wherever they come from).
{ lib }:
let
  fs = lib.fileset;
  root = ../.;
  # What `cargo build` reads: every workspace member (cargo loads them all),
  # and the panel's templates. Editing the docs or the modules rebuilds nothing.
  workspace = fs.unions [
    ../Cargo.toml
    ../Cargo.lock
    ../core
    ../admin-web
    ../agent
    ../tray
    ../templates
    ../tests
  ];
in
{
  workspace = fs.toSource {
    inherit root;
    fileset = workspace;
  };

  # This flake as a flake input: the VM test's hosts import the agent module
  # from it (nixos/tests/vm.nix).
  flake = fs.toSource {
    inherit root;
    fileset = fs.unions [
      workspace
      ../flake.nix
      (fs.maybeMissing ../flake.lock)
      ../nixos
    ];
  };
}
