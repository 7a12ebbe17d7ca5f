# services.bento.agent: keeps this host on the release its bento server
# publishes. Runs as root (it builds and activates systems) from a timer
# (`bento-agent run-once`) or as a daemon that also serves the local status
# socket the tray follows (`bento-agent daemon`).
{
  config,
  lib,
  pkgs,
  utils,
  ...
}:
let
  inherit (lib)
    literalExpression
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    optional
    types
    ;

  cfg = config.services.bento.agent;
  common = import ./common.nix { inherit lib; };
  settingsFormat = pkgs.formats.toml { };

  configPath = "/etc/bento/agent.toml";

  generated = lib.filterAttrs (_: v: v != null) {
    inherit (cfg) server port user;
    host = if cfg.host == "" then null else cfg.host;
    identity_file = cfg.keyFile;
    ssh_options = cfg.sshOptions;
    inherit (cfg) interval;
    jitter = cfg.randomizedDelaySec;
    reboot = common.rebootSettings cfg.reboot;
    reboot_grace = cfg.reboot.graceSecs;
    self_update = cfg.selfUpdate;
    nix_args = cfg.extraNixArgs;
    health_checks = cfg.healthChecks;
    socket_group = cfg.socketGroup;
    secrets_dir = cfg.secretsDir;
    secret_identity = cfg.secretIdentity;
    trusted_public_keys = cfg.trustedPublicKeys;
    inherit (cfg) build;
  };

  settingsFile = settingsFormat.generate "agent.toml" (generated // cfg.settings);

  # `bento-agent check-config` on the generated file: a bad setting fails the
  # system build rather than the next poll.
  checkedSettings =
    if pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform then
      pkgs.runCommand "agent.toml" { } ''
        ${cfg.package}/bin/bento-agent --config ${settingsFile} check-config
        cp ${settingsFile} $out
      ''
    else
      settingsFile;

  command = mode: utils.escapeSystemdExecArgs [
    "${cfg.package}/bin/bento-agent"
    "--config"
    configPath
    mode
  ];

  # What the agent runs: nix (build, profile), ssh (the server), systemctl
  # (reboot), git and archivers (flake inputs). As system.autoUpgrade.
  unit = {
    description = "bento agent: keeps this host on its published release";
    wants = [ "network-online.target" ];
    after = [ "network-online.target" ];
    path = [
      config.nix.package.out
      config.programs.ssh.package
      config.systemd.package
      pkgs.coreutils
      pkgs.gitMinimal
      pkgs.gnutar
      pkgs.gzip
      pkgs.xz.bin
    ];
    environment =
      config.nix.envVars
      // {
        # Non-flake hosts build <nixpkgs/nixos>.
        NIX_PATH =
          config.environment.sessionVariables.NIX_PATH or (lib.concatStringsSep ":" config.nix.nixPath);
        HOME = "/root";
        BENTO_AGENT_LOG = "info";
      }
      // config.networking.proxy.envVars;

    # The agent activates new systems itself: a switch must neither restart
    # nor stop it, or it would cut its own activation short. A new agent or new
    # settings take effect at its next start (timer mode: the next run).
    restartIfChanged = false;
    unitConfig.X-StopOnRemoval = false;

    # No sandboxing: this service is the system's activator, and whatever
    # namespace it ran in would be where the new system is switched to.
    serviceConfig = {
      StateDirectory = "bento";
      StateDirectoryMode = "0700";
      RuntimeDirectory = "bento";
      RuntimeDirectoryMode = "0755";
      RuntimeDirectoryPreserve = "yes";
    };
  };
in
{
  options.services.bento.agent = {
    enable = mkEnableOption "bento-agent, which keeps this host on the release its bento server publishes";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { component = "bento-agent"; };
      defaultText = literalExpression "pkgs.callPackage \"\${bento}/nixos/package.nix\" { component = \"bento-agent\"; }";
      description = "The bento-agent package.";
    };

    server = mkOption {
      type = types.str;
      example = "bento.example.org";
      description = ''
        The bento server, as ssh understands it: a host name, an address, or a
        `Host` alias of root's ssh configuration (for a ProxyJump, Tor or a VPN:
        see docs/networks.md).
      '';
    };

    port = mkOption {
      type = types.nullOr types.port;
      default = null;
      description = "SSH port of the server (default: what ssh's configuration says, usually 22).";
    };

    user = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "Login on the server (default: the host name; the server's module makes that user).";
    };

    host = mkOption {
      type = types.str;
      default = config.networking.hostName;
      defaultText = literalExpression "config.networking.hostName";
      description = ''
        This host's name in the fleet: its `hosts/<name>` directory or its
        `nixosConfigurations.<name>`. Empty: the machine's host name at run time.
      '';
    };

    keyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/etc/ssh/ssh_host_ed25519_key";
      description = ''
        Private SSH key the agent logs in with (readable by root only, not in
        the Nix store). The server lists its public half in
        `services.bento.server.hosts.<name>.keys`. Null: ssh's own choice
        (root's `~/.ssh/id_*`).
      '';
    };

    serverPublicKey = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA...";
      description = ''
        The server's SSH host key, added to the system's known hosts, so that
        the agent's first connection is verified too.
      '';
    };

    sshOptions = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "ProxyJump=gateway.example.org"
        "ServerAliveInterval=30"
      ];
      description = "Extra `-o Key=value` options for ssh.";
    };

    mode = mkOption {
      type = types.enum [
        "daemon"
        "timer"
      ];
      default = "daemon";
      description = ''
        `daemon`: `bento-agent daemon` polls on its own schedule and serves the
        local status socket (the tray, `bento-agent check-now`, scheduled and
        announced reboots). `timer`: a systemd timer runs `bento-agent
        run-once`; no socket.
      '';
    };

    interval = mkOption {
      type = types.ints.positive;
      default = 300;
      description = "Seconds between two polls of the server.";
    };

    randomizedDelaySec = mkOption {
      type = types.ints.unsigned;
      default = 30;
      description = ''
        Up to this many random seconds added to each interval (the agent's
        jitter in daemon mode, the timer's RandomizedDelaySec in timer mode),
        so that a fleet does not poll in step.
      '';
    };

    reboot = mkOption {
      default = { };
      description = "When this host reboots after an update changed its kernel.";
      type = types.submodule [
        common.rebootModule
        {
          options.graceSecs = mkOption {
            type = types.ints.unsigned;
            default = 300;
            description = "Seconds between announcing a reboot and doing it (daemon mode).";
          };
        }
      ];
    };

    selfUpdate = mkOption {
      type = types.bool;
      default = false;
      description = ''
        When no new release came, update the flake's inputs here and switch to
        the result (the original tool's `SELF_UPDATE`); reported as
        "auto updated".
      '';
    };

    extraNixArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "--fallback"
        "--option"
        "connect-timeout"
        "5"
      ];
      description = "Extra arguments for the agent's nix commands.";
    };

    healthChecks = mkOption {
      type = types.listOf (types.listOf types.str);
      default = [ ];
      example = [
        [
          "systemctl"
          "is-active"
          "nginx.service"
        ]
      ];
      description = ''
        Commands (argument lists, no shell) that must succeed after an
        activation, besides reaching the server; else the agent rolls back.
      '';
    };

    socketGroup = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "users";
      description = ''
        Members of this group (besides root) may ask the agent over its socket
        to check now and to postpone a scheduled reboot: the desktop users,
        through the tray. Everyone may read the status. The group is created if
        it does not exist.
      '';
    };

    trustedPublicKeys = mkOption {
      type = types.listOf types.str;
      default = lib.optional (cfg.binaryCache.publicKey != null) cfg.binaryCache.publicKey;
      defaultText = lib.literalExpression "lib.optional (binaryCache.publicKey != null) binaryCache.publicKey";
      example = [ "bento-server-1:AbC...=" ];
      description = ''
        The fleet's public signing key(s), as `bento check-config` prints them
        (`signing-key.pub` in the bento directory). With a key pinned, the agent
        refuses a release whose manifest is unsigned, signed by another key or
        older than the one applied, and fetches the server's signed closure
        instead of building (nix checks every signature with `require-sigs`).
      '';
    };

    build = mkOption {
      type = types.enum [
        "fallback"
        "never"
        "always"
      ];
      default = "fallback";
      description = ''
        How the system is obtained: `fallback` fetches the server's closure when
        the release has one and builds locally otherwise; `never` refuses a
        release without a closure (a small device that must never evaluate);
        `always` builds locally as before.
      '';
    };

    secretsDir = mkOption {
      type = types.str;
      default = "/run/bento/secrets";
      description = ''
        Where the agent installs the host's secrets (`bento secret set`) by
        default, as `<secretsDir>/<NAME>`: a symlink to the current generation
        under `<secretsDir>.d/`. A service can depend on a secret through its
        path (`unitConfig.ConditionPathExists`, or
        `systemd.services.<name>.unitConfig.RequiresMountsFor`).
      '';
    };

    secretIdentity = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/etc/ssh/ssh_host_ed25519_key";
      description = ''
        Private key that decrypts the host's secrets (an unencrypted OpenSSH
        ssh-ed25519 or ssh-rsa key, or an age identity file). Default: the key
        the agent logs in with (`keyFile`). Its public half must be in the
        host's `[hosts.<name>] keys` of bento.toml.
      '';
    };

    binaryCache = {
      url = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "http://bento.example.org:5000";
        description = "The bento server's binary cache (`services.bento.server.binaryCache`), added to the substituters.";
      };
      publicKey = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "bento.example.org-1:AbC...=";
        description = "Its public signing key, added to the trusted public keys.";
      };
    };

    settings = mkOption {
      type = types.submodule { freeformType = settingsFormat.type; };
      default = { };
      example = {
        timeout = 60;
        self_update_interval = 43200;
      };
      description = ''
        More keys of `/etc/bento/agent.toml` (docs/reference.md lists them),
        merged over the ones the options above write.
      '';
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        (common.rebootAssertion "services.bento.agent.reboot" cfg.reboot)
        {
          assertion = cfg.keyFile == null || !lib.hasPrefix builtins.storeDir cfg.keyFile;
          message = "services.bento.agent.keyFile is in the Nix store, which every user can read: keep the key in a root-only file.";
        }
      ];
      warnings = optional (cfg.mode == "timer" && cfg.reboot.mode == "window") ''
        services.bento.agent: in timer mode a reboot window is not announced ahead
        (nothing serves the socket); the agent reboots at a run inside the window.
        Use mode = "daemon" to have the tray announce it.
      '';

      environment.etc."bento/agent.toml".source = checkedSettings;
      environment.systemPackages = [ cfg.package ];

      users.groups = lib.optionalAttrs (cfg.socketGroup != null) { ${cfg.socketGroup} = { }; };

      programs.ssh.knownHosts = lib.optionalAttrs (cfg.serverPublicKey != null) {
        bento-server = {
          hostNames = [
            (if cfg.port == null || cfg.port == 22 then cfg.server else "[${cfg.server}]:${toString cfg.port}")
          ];
          publicKey = cfg.serverPublicKey;
        };
      };

      nix.settings = mkMerge [
        (mkIf (cfg.binaryCache.url != null) { extra-substituters = [ cfg.binaryCache.url ]; })
        (mkIf (cfg.binaryCache.publicKey != null) {
          extra-trusted-public-keys = [ cfg.binaryCache.publicKey ];
        })
      ];
    }

    (mkIf (cfg.mode == "daemon") {
      systemd.services.bento-agent = lib.recursiveUpdate unit {
        wantedBy = [ "multi-user.target" ];
        serviceConfig = {
          Type = "exec";
          ExecStart = command "daemon";
          Restart = "always";
          RestartSec = 30;
        };
      };
    })

    (mkIf (cfg.mode == "timer") {
      systemd.services.bento-agent = lib.recursiveUpdate unit {
        serviceConfig = {
          Type = "oneshot";
          ExecStart = command "run-once";
          # 3: the server could not be reached (a laptop away from the network):
          # the next run tries again, nothing failed.
          SuccessExitStatus = [ 3 ];
        };
      };
      systemd.timers.bento-agent = {
        description = "Poll the bento server";
        wantedBy = [ "timers.target" ];
        timerConfig = {
          OnBootSec = "1min";
          OnUnitInactiveSec = "${toString cfg.interval}s";
          RandomizedDelaySec = cfg.randomizedDelaySec;
        };
      };
    })
  ]);
}
