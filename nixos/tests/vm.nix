# The whole cycle on NixOS VMs: a bento server and two hosts, alpha (a flake)
# and beta (a configuration.nix), with the modules of this repository.
#
#   nix build .#checks.x86_64-linux.vm -L            (KVM, network for the first build)
#   nix build .#checks.x86_64-linux.vm-embedded -L   (the same over `bento sftp`)
#
# `sftpMode` is the server's services.bento.server.sftp.mode: "openssh" (sshd,
# a user per host) or "embedded" (bento's own SFTP server, keys only; then the
# two hosts log in with two different keys, as embedded mode requires).
#
# The hosts build and activate real NixOS systems, offline, inside their VMs:
# like nixpkgs' nixos-rebuild tests, each holds the build dependencies of its
# own system (system.includeBuildDependencies), and every configuration the
# server deploys to it is the VM's own (qemu-vm, test instrumentation, network,
# agent) plus a small change, so it builds from what is there.
#
# Steps: deploy (both up to date in `bento status --json`), a change, a
# failure (alpha's build fails) and a rollback (beta's new system fails its
# health check), recovery, and the panel answering /healthz and its API.
{
  sftpMode ? "openssh",
}:
{ hostPkgs, lib, ... }:
let
  pkgs = hostPkgs;
  embedded = sftpMode == "embedded";

  # This repository as a flake input for alpha: the same files give the same
  # store path, so the agent package alpha's flake evaluates is the one the VM
  # already runs.
  bentoFlake = (import ../source.nix { inherit lib; }).flake;

  sshKeys = import "${pkgs.path}/nixos/tests/ssh-keys.nix" pkgs;

  fleet = "/var/lib/bento-server/fleet";

  # Each host's key: one for both with sshd, one each with the embedded server.
  keys = {
    alpha = {
      private = sshKeys.snakeOilPrivateKey;
      public = sshKeys.snakeOilPublicKey;
    };
    beta =
      if embedded then
        {
          private = sshKeys.snakeOilEd25519PrivateKey;
          public = sshKeys.snakeOilEd25519PublicKey;
        }
      else
        keys.alpha;
  };

  # What each host's agent needs, in the VM and in every system deployed to
  # it (as JSON, imported there with lib.modules.importJSON).
  agentConfig = name: {
    services.bento.agent = {
      enable = true;
      server = "server";
      port = if embedded then 2222 else null;
      keyFile = "/etc/bento/id_key";
      sshOptions = [
        "StrictHostKeyChecking=accept-new"
        "UserKnownHostsFile=/var/lib/bento/known_hosts"
      ];
      interval = 10;
      randomizedDelaySec = 2;
      # The rollback step deploys a system that fails this check.
      healthChecks = [
        [
          "/run/current-system/sw/bin/test"
          "!"
          "-e"
          "/etc/bento-break"
        ]
      ];
      socketGroup = "wheel";
    };
    environment.etc."bento/id_key" = {
      source = keys.${name}.private;
      mode = "0600";
    };
    nix.nixPath = [ "nixpkgs=${pkgs.path}" ];
    nix.settings.experimental-features = [
      "nix-command"
      "flakes"
    ];
  };

  # The configuration the server deploys to a host: the VM's own, as
  # nixpkgs' nixos-rebuild target-host test writes it, plus ./change.nix.
  hostConfiguration =
    name: extraImports:
    pkgs.writeText "configuration.nix" ''
      { lib, modulesPath, ... }:
      {
        imports = [
          (modulesPath + "/virtualisation/qemu-vm.nix")
          (modulesPath + "/testing/test-instrumentation.nix")
          ./hardware-configuration.nix
          (lib.modules.importJSON ./network.json)
          (lib.modules.importJSON ./agent.json)
          ./change.nix
          ${extraImports}
        ];
        boot.loader.grub = {
          enable = true;
          device = "/dev/vda";
          forceInstall = true;
        };
        documentation.enable = false;
        networking.hostName = "${name}";
        nix.settings = {
          substituters = lib.mkForce [ ];
          hashed-mirrors = null;
          connect-timeout = 1;
        };
      }
    '';

  alphaFlake = pkgs.writeText "flake.nix" ''
    {
      inputs.nixpkgs.url = "path:${pkgs.path}";
      inputs.bento.url = "path:${bentoFlake}";
      inputs.bento.inputs.nixpkgs.follows = "nixpkgs";
      outputs = { nixpkgs, bento, ... }: {
        # hardware-configuration.nix sets nixpkgs.hostPlatform.
        nixosConfigurations.alpha = nixpkgs.lib.nixosSystem {
          modules = [ bento.nixosModules.agent ./configuration.nix ];
        };
      };
    }
  '';

  hostFiles = {
    alpha = {
      "flake.nix" = alphaFlake;
      "configuration.nix" = hostConfiguration "alpha" "";
    };
    beta = {
      "configuration.nix" = hostConfiguration "beta" "\"${bentoFlake}/nixos/agent.nix\"";
    };
  };

  agentJSON = name: pkgs.writeText "agent.json" (builtins.toJSON (agentConfig name));

  changes = {
    v1 = pkgs.writeText "change.nix" ''
      { environment.etc."bento-generation".text = "1\n"; }
    '';
    v2 = pkgs.writeText "change.nix" ''
      { environment.etc."bento-generation".text = "2\n"; }
    '';
    v3 = pkgs.writeText "change.nix" ''
      { environment.etc."bento-generation".text = "3\n"; }
    '';
    # Evaluates (the server's dry build passes), fails to build on the host.
    broken-build = pkgs.writeText "change.nix" ''
      { pkgs, ... }:
      {
        environment.etc."bento-generation".text = "2\n";
        environment.etc."bento-broken".source = pkgs.runCommand "bento-broken" { } '''
          echo "a deliberately broken build" >&2
          exit 1
        ''';
      }
    '';
    # Builds and activates, then fails the agent's health check: rolled back.
    fails-health-check = pkgs.writeText "change.nix" ''
      {
        environment.etc."bento-generation".text = "2\n";
        environment.etc."bento-break".text = "this system fails its health check\n";
      }
    '';
  };

  client =
    name:
    { lib, modulesPath, ... }:
    {
      imports = [
        ../agent.nix
        (agentConfig name)
        # As nixpkgs' nixos-rebuild tests: with these, a configuration derived
        # from the VM's own builds offline.
        (modulesPath + "/profiles/installation-device.nix")
        (modulesPath + "/profiles/base.nix")
      ];
      nix.settings = {
        substituters = lib.mkForce [ ];
        hashed-mirrors = null;
        connect-timeout = 1;
      };
      # Every deployed system builds offline from these.
      system.includeBuildDependencies = true;
      system.extraDependencies = [
        pkgs.grub2
        bentoFlake
      ];
      system.switch.enable = true;
      virtualisation = {
        cores = 2;
        memorySize = 4096;
      };
    };
in
{
  name = if embedded then "bento-embedded" else "bento";
  meta.timeout = 5400;
  # installation-device.nix sets nixpkgs.overlays (as in nixpkgs' tests).
  node.pkgsReadOnly = false;

  nodes = {
    server =
      { lib, ... }:
      {
        imports = [ ../server.nix ];
        services.bento.server = {
          enable = true;
          sftp.mode = sftpMode;
          sftp.openFirewall = true;
          hosts.alpha = {
            keys = [ keys.alpha.public ];
            tags = [ "flake" ];
          };
          hosts.beta = {
            keys = [ keys.beta.public ];
            tags = [ "configuration.nix" ];
          };
          settings = {
            # Evaluate only: the hosts build for themselves.
            local_build = false;
            poll_interval = 10;
          };
        };
        nix.nixPath = [ "nixpkgs=${pkgs.path}" ];
        nix.settings.substituters = lib.mkForce [ ];
        system.extraDependencies = [ bentoFlake ];
        environment.systemPackages = [
          pkgs.curl
          pkgs.jq
        ];
        virtualisation = {
          cores = 2;
          memorySize = 3072;
        };
      };
    alpha = client "alpha";
    beta = client "beta";
  };

  testScript =
    { nodes, ... }:
    let
      networkJSON =
        name: pkgs.writeText "network.json" (builtins.toJSON nodes.${name}.system.build.networkConfig);
      # [source on the test host, destination on the server], as a Python literal.
      hostCopies = builtins.toJSON (
        lib.concatMap (
          name:
          lib.mapAttrsToList (file: src: [
            "${src}"
            "${fleet}/hosts/${name}/${file}"
          ]) (hostFiles.${name} // { "agent.json" = agentJSON name; "network.json" = networkJSON name; })
        ) [ "alpha" "beta" ]
      );
    in
    ''
      import base64

      hosts = [alpha, beta]


      def put(path, text):
          data = base64.b64encode(text.encode()).decode()
          server.succeed(f"mkdir -p $(dirname {path}) && echo {data} | base64 -d > {path}")


      def set_change(name, change):
          server.copy_from_host(change, f"${fleet}/hosts/{name}/change.nix")
          server.succeed("chown -R bento:bento ${fleet}")


      def deploy():
          # `bento` run by root runs as the bento user (the module's wrapper).
          server.succeed("bento deploy >&2")


      def wait_for_states(timeout=2400, **wanted):
          query = " and ".join(
              f'(map(select(.host == "{h}"))[0].state == "{s}")' for h, s in wanted.items()
          )
          server.wait_until_succeeds(
              f"bento status --json | tee /dev/stderr | jq -e '{query}'", timeout=timeout
          )


      def generation(machine):
          return machine.succeed("cat /etc/bento-generation").strip()


      embedded = ${if embedded then "True" else "False"}

      start_all()
      server.wait_for_unit("bento-sftp.service" if embedded else "sshd.service")
      server.wait_for_unit("bento-panel.service")
      server.wait_for_open_port(8080)
      if embedded:
          server.wait_for_open_port(2222)

      with subtest("the panel answers"):
          server.succeed("curl -fsS http://127.0.0.1:8080/healthz")

      if embedded:
          with subtest("embedded SFTP: no host users, chroots the bento user's"):
              for h in ["alpha", "beta"]:
                  server.fail(f"id {h}")
                  server.succeed(f'test "$(stat -c %U:%G:%a /srv/bento/{h})" = bento:bento:755')
                  server.succeed(f'test "$(stat -c %U /srv/bento/{h}/logs)" = bento')
                  server.succeed(f'test "$(readlink /srv/bento/{h}/config)" = .releases/current')
              server.succeed(
                  "test -f /var/lib/bento-server/sftp_host_ed25519_key",
                  "systemctl show -p User bento-sftp | grep -qx User=bento",
                  "bento check-config",
              )

      if not embedded:
          with subtest("the module made users, chroots and the sshd Match block"):
              server.succeed("id -nG alpha | grep -qw sftp_users", "id -nG beta | grep -qw sftp_users")
              for h in ["alpha", "beta"]:
                  server.succeed(f'test "$(stat -c %U:%G:%a /srv/bento/{h})" = root:root:755')
                  server.succeed(f'test "$(stat -c %U:%G /srv/bento/{h}/logs)" = {h}:sftp_users')
                  server.succeed(f'test "$(stat -c %U /srv/bento/{h}/.releases)" = bento')
                  server.succeed(f'test "$(readlink /srv/bento/{h}/config)" = .releases/current')
              server.succeed(
                  "sshd -T -C user=alpha,host=alpha,addr=192.168.1.2 | grep -q '^chrootdirectory /srv/bento/'",
                  "sshd -T -C user=alpha,host=alpha,addr=192.168.1.2 | grep -qx 'forcecommand internal-sftp'",
                  "test -L ${fleet}/bento.toml",
                  "bento check-config",
              )

      with subtest("the hosts' directories: alpha a flake, beta a configuration.nix"):
          for m in hosts:
              m.wait_for_unit("bento-agent.service")
              put(f"${fleet}/hosts/{m.name}/hardware-configuration.nix",
                  m.succeed("nixos-generate-config --show-hardware-config"))
          for src, dst in ${hostCopies}:
              server.copy_from_host(src, dst)
          for h in ["alpha", "beta"]:
              set_change(h, "${changes.v1}")
          server.succeed("bento flake-update >&2")
          server.succeed("test -f ${fleet}/hosts/alpha/flake.lock")

      with subtest("first deploy: both hosts up to date"):
          deploy()
          wait_for_states(alpha="up-to-date", beta="up-to-date")
          for m in hosts:
              assert generation(m) == "1", f"{m.name} runs generation {generation(m)}"
          # The flake host runs exactly what the server evaluated.
          server.succeed(
              "bento status --json | jq -e "
              + "'map(select(.host == \"alpha\"))[0] | .running_system == .expected_system'"
          )
          alpha.succeed("bento-agent status --json | jq -e '.last_update.status == \"success\"'")

      with subtest("a change reaches both hosts"):
          for h in ["alpha", "beta"]:
              set_change(h, "${changes.v2}")
          deploy()
          wait_for_states(alpha="up-to-date", beta="up-to-date")
          for m in hosts:
              assert generation(m) == "2", f"{m.name} runs generation {generation(m)}"

      with subtest("a failed build on alpha, a rollback on beta"):
          set_change("alpha", "${changes.broken-build}")
          set_change("beta", "${changes.fails-health-check}")
          deploy()
          wait_for_states(alpha="failing", beta="rolled-back")
          # Both still run the last good system.
          for m in hosts:
              assert generation(m) == "2", f"{m.name} runs generation {generation(m)}"
          beta.fail("test -e /etc/bento-break")
          beta.succeed("bento-agent status --json | jq -e '.last_update.status == \"rollback\"'")

      with subtest("the fleet recovers"):
          for h in ["alpha", "beta"]:
              set_change(h, "${changes.v3}")
          deploy()
          wait_for_states(alpha="up-to-date", beta="up-to-date")
          for m in hosts:
              assert generation(m) == "3", f"{m.name} runs generation {generation(m)}"

      with subtest("the panel shows the fleet"):
          server.succeed("curl -fsS http://127.0.0.1:8080/healthz")
          token = server.succeed("bento token add vm-test").strip()
          server.wait_until_succeeds(
              f"curl -fsS -H 'Authorization: Bearer {token}' http://127.0.0.1:8080/api/v1/hosts/alpha"
              + " | jq -e '.state == \"up-to-date\"'",
              timeout=120,
          )
    '';
}
