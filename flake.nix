{
  description = "bento: pull-based deployment for fleets of NixOS machines";

  # bento builds with rustc 1.91 or newer (Cargo.toml's rust-version; nixos/package.nix
  # checks): NixOS 25.11's own rustc is enough.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # The same derivations as the modules' default packages.
      bentoPackages = pkgs: {
        bento = pkgs.callPackage ./nixos/package.nix { };
        bento-agent = pkgs.callPackage ./nixos/package.nix { component = "bento-agent"; };
        bento-tray = pkgs.callPackage ./nixos/package.nix { component = "bento-tray"; };
      };
    in
    {
      packages = forAllSystems (
        pkgs:
        let
          p = bentoPackages pkgs;
        in
        p // { default = p.bento; }
      );

      # Note: nixpkgs has an unrelated package called bento; this overlay replaces it.
      overlays.default = final: _prev: bentoPackages final;

      nixosModules = {
        server = ./nixos/server.nix;
        agent = ./nixos/agent.nix;
        tray = ./nixos/tray.nix;
        default = {
          imports = [
            ./nixos/server.nix
            ./nixos/agent.nix
            ./nixos/tray.nix
          ];
        };
      };

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          # Everything the tray's GTK/WebKit build needs, and the Rust tools.
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.bento-tray ];
          packages = [
            pkgs.cargo
            pkgs.rustc
            pkgs.clippy
            pkgs.rustfmt
            pkgs.rust-analyzer
            pkgs.openssh
            pkgs.sqlite
          ];
        };
      });

      checks = lib.genAttrs systems (
        system:
        self.packages.${system}
        // lib.optionalAttrs (system == "x86_64-linux") {
          vm = nixpkgs.legacyPackages.${system}.testers.runNixOSTest (import ./nixos/tests/vm.nix { });
          vm-embedded = nixpkgs.legacyPackages.${system}.testers.runNixOSTest (
            import ./nixos/tests/vm.nix { sftpMode = "embedded"; }
          );
        }
      );
    };
}
