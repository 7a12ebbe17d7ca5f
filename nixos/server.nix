# services.bento.server: the management server of a bento fleet.
#
# - the bento directory (bento.toml generated from `settings`, checked with
#   `bento check-config` at build time; hosts/ and utils/ are the admin's);
# - per host: a system user with its SSH keys, its chroot directory with the
#   ownership bento needs (so `bento deploy` never needs root), and the sshd
#   Match block that locks the users into their chroots (OpenSSH mode); or
#   bento's own SFTP server as the `bento-sftp` service, with the keys in
#   bento.toml and no users or sshd change at all (embedded mode);
# - the web panel `bento serve` as a hardened service, run by the `bento` user
#   that also publishes releases;
# - optionally, this machine's Nix store as a binary cache for the hosts.
{
  config,
  lib,
  options,
  pkgs,
  utils,
  ...
}:
let
  inherit (lib)
    concatStringsSep
    literalExpression
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    mkOrder
    optional
    optionals
    types
    ;

  cfg = config.services.bento.server;
  bentoLib = import ./lib.nix;
  common = import ./common.nix { inherit lib; };
  settingsFormat = pkgs.formats.toml { };

  dataDir = "/var/lib/bento-server";
  chrootDir = lib.removeSuffix "/" cfg.settings.chroot_dir;
  # The fleet's Nix signing key (bento.toml `signing_key`), made once by
  # bento-signing-key.service, outside the store; its public half beside it.
  signingKeySetting = cfg.settings.signing_key or "signing-key.sec";
  signingKey =
    if lib.hasPrefix "/" signingKeySetting then
      signingKeySetting
    else
      "${cfg.directory}/${signingKeySetting}";

  hostSettings =
    name: host:
    {
      inherit (host) keys tags;
      self_update = host.selfUpdate;
    }
    // lib.optionalAttrs (host.reboot != null) { reboot = common.rebootSettings host.reboot; }
    // host.settings;

  settingsFile = settingsFormat.generate "bento.toml" cfg.settings;

  # The same check the admin runs by hand, on the generated file: a typo in a
  # key fails the system build instead of the panel's start.
  checkedSettings =
    if pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform then
      pkgs.runCommand "bento.toml" { } ''
        mkdir -p bento/hosts
        cp ${settingsFile} bento/bento.toml
        ${cfg.package}/bin/bento --dir bento check-config
        cp ${settingsFile} $out
      ''
    else
      settingsFile;

  # `bento` for the admin: the server's bento directory by default, and run as
  # the publishing user when called by root, so that everything it writes
  # (releases, the panel's database, lock files) stays that user's.
  bentoCommand = pkgs.writeShellScriptBin "bento" ''
    export BENTO_DIR="''${BENTO_DIR:-${cfg.directory}}"
    export NIX_PATH="''${NIX_PATH:-${concatStringsSep ":" config.nix.nixPath}}"
    if [ "$(${pkgs.coreutils}/bin/id -u)" = 0 ]; then
      exec ${pkgs.util-linux}/bin/runuser -u ${cfg.user} -- ${cfg.package}/bin/bento "$@"
    fi
    exec ${cfg.package}/bin/bento "$@"
  '';

  listenPort = lib.toInt (lib.last (lib.splitString ":" cfg.settings.web.listen));
  listenHost = lib.removeSuffix ":${toString listenPort}" cfg.settings.web.listen;
  listensOnLoopback =
    lib.hasPrefix "127." listenHost || listenHost == "[::1]" || listenHost == "localhost";

  # A Match block runs to the end of sshd_config: it must come after every
  # global line other modules add, mkAfter (1500) ones included.
  sshdMatchOrder = 10000;

  # Users that other modules define (sshd, nobody, harmonia, ...): a host named
  # like one would merge into that account ("conflicting definition values"), so
  # such a host gets no user and an assertion says why. Only the definitions'
  # attribute names are read: their values, ours included, stay unevaluated.
  ownFile = toString ./server.nix;
  foreignUserDefs = lib.filter (d: d.file != ownFile) options.users.users.definitionsWithLocations;
  takenBy = name: lib.findFirst (d: d.value ? ${name}) null foreignUserDefs;
  takenHostNames = lib.filter (n: takenBy n != null) (lib.attrNames cfg.hosts);

  # What `bento sftp` reads only at its start; host keys it reads again live.
  sftpRestartSettings = {
    inherit (cfg.settings) chroot_dir sftp;
  };

  underHome = p: lib.hasPrefix "/home/" p || lib.hasPrefix "/root/" p || p == "/home" || p == "/root";

  # What the panel and the SFTP service share: the bento user, its state
  # directory, and the systemd hardening both run under.
  serviceBase = {
    User = cfg.user;
    Group = cfg.group;
    StateDirectory = "bento-server";
    StateDirectoryMode = "0750";
    # Releases must stay readable by the host users.
    UMask = "0022";
    ProtectSystem = "strict";
    ProtectHome = if underHome chrootDir || underHome cfg.directory then "read-only" else true;
    PrivateTmp = true;
    PrivateDevices = true;
    DevicePolicy = "closed";
    NoNewPrivileges = true;
    CapabilityBoundingSet = [ "" ];
    AmbientCapabilities = [ "" ];
    RestrictAddressFamilies = [
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
    ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    ProtectClock = true;
    ProtectControlGroups = true;
    ProtectHostname = true;
    ProtectKernelLogs = true;
    ProtectKernelModules = true;
    ProtectKernelTunables = true;
    ProtectProc = "invisible";
    RemoveIPC = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [
      "@system-service"
      "~@privileged"
    ];
  };

  hostModule = {
    options = {
      keys = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... root@web1" ];
        description = ''
          SSH public keys the host's agent logs in with: the public half of its
          {option}`services.bento.agent.keyFile`.
        '';
      };
      tags = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [
          "office"
          "laptop"
        ];
        description = "Labels to filter the fleet by in the panel.";
      };
      reboot = mkOption {
        type = types.nullOr (types.submodule common.rebootModule);
        default = null;
        description = ''
          The host's reboot policy, recorded in `[hosts.<name>] reboot`. The host
          applies its own {option}`services.bento.agent.reboot`: set both from
          one place (a shared module in the bento directory's `utils/`).
        '';
      };
      selfUpdate = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Recorded in `[hosts.<name>] self_update`; the host's
          {option}`services.bento.agent.selfUpdate` decides.
        '';
      };
      settings = mkOption {
        type = types.submodule { freeformType = settingsFormat.type; };
        default = { };
        description = "More keys of `[hosts.<name>]` in bento.toml, as written there (`user` in embedded mode).";
      };
    };
  };
in
{
  options.services.bento.server = {
    enable = mkEnableOption "the bento server: host users and chroots, and the web panel";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = literalExpression "pkgs.callPackage \"\${bento}/nixos/package.nix\" { }";
      description = ''
        The bento package (the `bento` command and panel). Built from the
        repository this module comes from; the flake's `packages.<system>.bento`
        is the same derivation.
      '';
    };

    user = mkOption {
      type = types.str;
      default = "bento";
      description = ''
        The unprivileged user that runs the panel and publishes releases (owner
        of every host's `.releases/`). `bento` run as root on this machine runs
        as this user.
      '';
    };

    group = mkOption {
      type = types.str;
      default = "bento";
      description = "The group of {option}`user`.";
    };

    directory = mkOption {
      type = types.str;
      default = "${dataDir}/fleet";
      description = ''
        The bento directory: `bento.toml`, `hosts/` (one directory per host or
        per flake) and `utils/`. Created empty, owned by {option}`user`; put
        your hosts there (a git checkout works). A `config.sh` of the original
        shell tool is still read when {option}`manageSettingsFile` is off.
      '';
    };

    manageSettingsFile = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Link `<directory>/bento.toml` to the file generated from
        {option}`settings` (checked at build time). Turn it off to keep a
        bento.toml of your own in the directory; {option}`hosts` still makes
        the users and chroots, and the panel still uses `settings.web`.
      '';
    };

    hosts = mkOption {
      type = types.attrsOf (types.submodule hostModule);
      default = { };
      example = literalExpression ''
        {
          web1 = { keys = [ "ssh-ed25519 AAAA... root@web1" ]; tags = [ "web" ]; };
          laptop-anna = {
            keys = [ "ssh-ed25519 AAAA... root@laptop-anna" ];
            tags = [ "laptop" ];
            reboot = { mode = "window"; window = "12:00-14:00"; };
          };
        }
      '';
      description = ''
        The fleet, by host name (its `hosts/<name>` directory, or its
        `nixosConfigurations.<name>` in a flake under `hosts/`). In OpenSSH
        mode each host gets a system user of the same name in
        {option}`sftp.group`, with its keys, and a chroot directory under
        `settings.chroot_dir`. Host names must then be valid user names:
        lower case letters, digits, `-` and `_`, at most 31 characters, and
        not the name of a user another module makes (`sshd`, `nobody`, ...).
      '';
    };

    sftp = {
      mode = mkOption {
        type = types.enum [
          "openssh"
          "embedded"
        ];
        default = "openssh";
        description = ''
          How the hosts reach their chroots. `openssh`: this machine's sshd,
          one system user per host, chrooted by a `Match Group` block (the
          original tool's setup). `embedded`: bento's own SFTP server
          (`bento sftp`, the `bento-sftp` service) run by {option}`user` on
          {option}`sftp.port`, each host logging in with its keys from
          {option}`hosts`; no system users, no sshd change, and host names
          need not be user names.
        '';
      };
      group = mkOption {
        type = types.str;
        default = "sftp_users";
        description = "The group of the host users; sshd's `Match Group` selects it.";
      };
      port = mkOption {
        type = types.port;
        default = 2222;
        description = "Port of the embedded SFTP server (mode `embedded`).";
      };
      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = "Open {option}`sftp.port` in the firewall (mode `embedded`).";
      };
      memoryMax = mkOption {
        type = types.nullOr types.str;
        default = "1G";
        example = "256M";
        description = ''
          systemd `MemoryMax` of the `bento-sftp` service (mode `embedded`): a bound
          on what all hosts' connections together may cost, whatever a client does.
          `null` for no limit.
        '';
      };
    };

    settings = mkOption {
      default = { };
      description = ''
        bento.toml (every key is described in docs/reference.md). `hosts`
        comes from {option}`services.bento.server.hosts` and `publish_user`
        from {option}`services.bento.server.user`.
      '';
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          chroot_dir = mkOption {
            type = types.strMatching "/.+";
            default = "/srv/bento";
            description = ''
              Where the hosts' chroots live. sshd requires every component of
              the path to be owned by root and writable by no one else: keep it
              out of `/var/lib/bento-server`, which belongs to {option}`user`.
            '';
          };
          remote = mkOption {
            type = types.str;
            default = config.networking.fqdnOrHostName or config.networking.hostName;
            defaultText = literalExpression "config.networking.fqdnOrHostName";
            description = "Host name or address the agents connect to.";
          };
          remote_port = mkOption {
            type = types.port;
            default =
              if cfg.sftp.mode == "embedded" then
                cfg.sftp.port
              else
                lib.head (config.services.openssh.ports ++ [ 22 ]);
            defaultText = literalExpression ''
              if sftp.mode == "embedded" then sftp.port else head config.services.openssh.ports'';
            description = "Its SSH port.";
          };
          local_build = mkOption {
            type = types.bool;
            default = true;
            description = ''
              Build every host's system on this server at `bento deploy`
              (false: only evaluate it). Building here fills the binary cache.
            '';
          };
          web = mkOption {
            default = { };
            description = "The `[web]` table: the panel.";
            type = types.submodule {
              freeformType = settingsFormat.type;
              options = {
                listen = mkOption {
                  type = types.str;
                  default = "127.0.0.1:8080";
                  description = ''
                    Address of the panel. Keep it on loopback behind a TLS reverse
                    proxy (then set `secure_cookies = true` and
                    {option}`panel.behindProxy`).
                  '';
                };
                database_url = mkOption {
                  type = types.str;
                  default = "sqlite://${dataDir}/panel.sqlite";
                  description = "The panel's database.";
                };
              };
            };
          };
        };
      };
    };

    panel = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Whether to run the web panel (`bento serve`) as the `bento-panel` service.";
      };
      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Open the port of `settings.web.listen` in the firewall. The panel listens
          on loopback by default, where an open port serves no one: set
          `settings.web.listen` too, or rather put a TLS reverse proxy in front.
        '';
      };
      memoryMax = mkOption {
        type = types.nullOr types.str;
        default = "4G";
        description = ''
          systemd `MemoryMax` of the `bento-panel` service. Its jobs evaluate the
          hosts' configurations with nix, which takes most of it on a large fleet:
          raise it (or set `null`) if jobs are killed for memory.
        '';
      };
      behindProxy = mkOption {
        type = types.bool;
        default = false;
        description = "A reverse proxy on this machine serves the panel: take client addresses from X-Forwarded-For.";
      };
      extraArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [
          "--rescan-secs"
          "120"
        ];
        description = "More arguments for `bento serve`.";
      };
    };

    binaryCache = {
      enable = mkEnableOption ''
        serving this machine's Nix store to the hosts as a binary cache
        (harmonia), so that they download what the server already built
        (`settings.local_build`) instead of building it again
      '';
      port = mkOption {
        type = types.port;
        default = 5000;
        description = "Port of the binary cache.";
      };
      secretKeyFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/var/lib/secrets/bento-cache.sec";
        description = ''
          Signing key (`nix-store --generate-binary-cache-key NAME sec pub`),
          kept out of the Nix store. The hosts trust its public half through
          {option}`services.bento.agent.binaryCache.publicKey`.
        '';
      };
      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = "Open {option}`binaryCache.port` in the firewall.";
      };
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        {
          assertion = !(cfg.hosts ? ${cfg.user}) && !(cfg.hosts ? root);
          message = "services.bento.server.hosts: a host may not be called ${cfg.user} or root (its user would be the publisher's or root).";
        }
      ]
      ++ lib.concatLists (
        lib.mapAttrsToList (
          name: h:
          optional (h.reboot != null) (common.rebootAssertion "services.bento.server.hosts.${name}.reboot" h.reboot)
        ) cfg.hosts
      );

      services.bento.server.settings = {
        publish_user = cfg.user;
        hosts = lib.mapAttrs hostSettings cfg.hosts;
      };

      users.users.${cfg.user} = {
        isSystemUser = true;
        inherit (cfg) group;
        home = dataDir;
        description = "bento publisher and panel";
      };
      users.groups.${cfg.group} = { };

      # The hosts' chroots as `bento deploy` run as root would leave them, so
      # that every publication works as cfg.user.
      systemd.tmpfiles.rules = [
        "d ${dataDir} 0750 ${cfg.user} ${cfg.group} - -"
        "d ${cfg.directory} 0750 ${cfg.user} ${cfg.group} - -"
        "d ${cfg.directory}/hosts 0750 ${cfg.user} ${cfg.group} - -"
      ]
      ++ optional cfg.manageSettingsFile "L+ ${cfg.directory}/bento.toml - - - - ${checkedSettings}"
      ++ bentoLib.chrootRules {
        inherit chrootDir;
        inherit (cfg) hosts;
        inherit (cfg.sftp) group;
        publishUser = cfg.user;
        publishGroup = cfg.group;
        embedded = cfg.sftp.mode == "embedded";
      };

      environment.systemPackages = [ bentoCommand ];

      # Deploys build through the daemon as cfg.user (`extra-`: appended to
      # allowed-users, whatever it is).
      nix.settings.extra-allowed-users = [ cfg.user ];
    }

    (mkIf (cfg.sftp.mode == "openssh") {
      assertions = [
        {
          assertion = lib.all bentoLib.validHostUser (lib.attrNames cfg.hosts);
          message = ''
            services.bento.server.hosts: in OpenSSH mode every host name is a system
            user name too (lower case letters, digits, '-' and '_', at most 31
            characters, not starting with a digit or '-'); these are not:
            ${concatStringsSep ", " (lib.filter (n: !bentoLib.validHostUser n) (lib.attrNames cfg.hosts))}
          '';
        }
        {
          assertion = takenHostNames == [ ];
          message = ''
            services.bento.server.hosts: in OpenSSH mode each host gets a system user
            named like it, but these names are users of other modules already:
            ${concatStringsSep ", " (map (n: "${n} (defined in ${(takenBy n).file})") takenHostNames)}
            Rename the hosts, or use sftp.mode = "embedded" (no users).
          '';
        }
        {
          assertion =
            !(cfg.settings ? default_user)
            && lib.all (n: (cfg.settings.hosts.${n}.user or n) == n) (lib.attrNames cfg.settings.hosts);
          message = ''
            services.bento.server.settings: in OpenSSH mode each host logs in as the
            user named like it (sshd chroots user %u into chroot_dir/%u): remove
            default_user and hosts.<name>.user.
          '';
        }
      ];

      services.openssh.enable = true;
      services.openssh.extraConfig = mkOrder sshdMatchOrder (
        bentoLib.sshdMatchBlock {
          inherit (cfg.sftp) group;
          inherit chrootDir;
        }
      );

      users.groups.${cfg.sftp.group} = { };
      # One definition per name, each behind its own condition: the list of
      # definitions of users.users, which takenBy reads, does not depend on it.
      users.users = lib.mkMerge (
        lib.mapAttrsToList (name: user: { ${name} = mkIf (takenBy name == null) user; }) (
          bentoLib.hostUsers {
            inherit (cfg) hosts;
            inherit (cfg.sftp) group;
          }
        )
      );
    })

    (mkIf (cfg.sftp.mode == "embedded") {
      assertions = [
        {
          assertion = lib.all (h: h.keys != [ ]) (lib.attrValues cfg.hosts);
          message = ''
            services.bento.server.hosts: in embedded mode a host logs in only with
            its keys; these hosts have none:
            ${concatStringsSep ", " (lib.attrNames (lib.filterAttrs (_: h: h.keys == [ ]) cfg.hosts))}
          '';
        }
      ];

      # `bento serve` leaves SFTP to the bento-sftp service below, so that a
      # panel restart does not cut the agents off.
      services.bento.server.settings.sftp = {
        enable = false;
        listen = "[::]:${toString cfg.sftp.port}";
        host_key = "${dataDir}/sftp_host_ed25519_key";
      };

      # bento deploy signs every manifest and closure with this key; agents pin
      # its public half (services.bento.agent.trustedPublicKeys).
      systemd.services.bento-signing-key = {
        description = "bento: the fleet's Nix signing key";
        wantedBy = [ "multi-user.target" ];
        after = [ "systemd-tmpfiles-setup.service" ];
        unitConfig.ConditionPathExists = "!${signingKey}";
        path = [ config.nix.package ];
        serviceConfig = {
          Type = "oneshot";
          User = cfg.user;
          Group = cfg.group;
          UMask = "0077";
          ExecStart = utils.escapeSystemdExecArgs [
            "${cfg.package}/bin/bento"
            "--dir"
            cfg.directory
            "signing-key"
          ];
        };
      };

      systemd.services.bento-sftp = {
        description = "bento SFTP server for the hosts' chroots";
        wantedBy = [ "multi-user.target" ];
        after = [
          "network.target"
          "systemd-tmpfiles-setup.service"
        ];
        # The host keys are read again from bento.toml when it changes, so a
        # new host or key must not cut the other hosts' transfers.
        restartTriggers = [ (builtins.toJSON sftpRestartSettings) ];
        environment.BENTO_LOG = "info";
        serviceConfig = serviceBase // {
          ExecStart = utils.escapeSystemdExecArgs [
            "${cfg.package}/bin/bento"
            "--dir"
            cfg.directory
            "sftp"
          ];
          Restart = "always";
          RestartSec = 2;
          # Binding a port under 1024 is allowed, nothing else privileged.
          AmbientCapabilities = optional (cfg.sftp.port < 1024) "CAP_NET_BIND_SERVICE";
          CapabilityBoundingSet = if cfg.sftp.port < 1024 then [ "CAP_NET_BIND_SERVICE" ] else [ "" ];
          # Hosts write only their logs/; the host key lives in the state directory.
          ReadWritePaths = [ chrootDir ];
          ReadOnlyPaths = [ cfg.directory ];
          # It runs no other program.
          MemoryDenyWriteExecute = true;
          ProcSubset = "pid";
          LimitNOFILE = 65536;
        }
        // lib.optionalAttrs (cfg.sftp.memoryMax != null) { MemoryMax = cfg.sftp.memoryMax; };
      };

      networking.firewall.allowedTCPPorts = optionals cfg.sftp.openFirewall [ cfg.sftp.port ];
    })

    (mkIf cfg.panel.enable {
      warnings = optional (cfg.panel.openFirewall && listensOnLoopback) ''
        services.bento.server.panel.openFirewall opens port ${toString listenPort}, but the
        panel listens on ${cfg.settings.web.listen} (settings.web.listen), which no other
        machine can reach. Set settings.web.listen, or serve the panel through a TLS
        reverse proxy and leave the port closed.
      '';

      systemd.services.bento-panel = {
        description = "bento web panel";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        after = [
          "network-online.target"
          "nix-daemon.socket"
          "systemd-tmpfiles-setup.service"
          "bento-signing-key.service"
        ];
        requires = [
          "nix-daemon.socket"
          "bento-signing-key.service"
        ];
        restartTriggers = [ checkedSettings ];

        # The panel's jobs run nix (build, deploy, flake update, diff).
        path = [
          config.nix.package
          pkgs.gitMinimal
          config.programs.ssh.package
          pkgs.coreutils
          pkgs.gnutar
          pkgs.gzip
        ];
        environment = {
          HOME = dataDir;
          BENTO_LOG = "info";
          NIX_PATH = concatStringsSep ":" config.nix.nixPath;
        }
        // config.networking.proxy.envVars;

        serviceConfig = serviceBase // {
          ExecStart = utils.escapeSystemdExecArgs (
            [
              "${cfg.package}/bin/bento"
              "--dir"
              cfg.directory
              "serve"
              "--listen"
              cfg.settings.web.listen
              "--database"
              cfg.settings.web.database_url
            ]
            ++ optional cfg.panel.behindProxy "--behind-proxy"
            ++ cfg.panel.extraArgs
          );
          WorkingDirectory = cfg.directory;
          Restart = "on-failure";
          RestartSec = 5;

          # The jobs run nix as a child (through the daemon), which is why
          # neither MemoryDenyWriteExecute nor a tighter system call filter is
          # set, and why disallowed calls fail instead of killing.
          ReadWritePaths = [
            chrootDir
            cfg.directory
          ];
          RestrictAddressFamilies = serviceBase.RestrictAddressFamilies ++ [ "AF_NETLINK" ];
          SystemCallErrorNumber = "EPERM";
        }
        // lib.optionalAttrs (cfg.panel.memoryMax != null) { MemoryMax = cfg.panel.memoryMax; };
      };

      networking.firewall.allowedTCPPorts = optionals cfg.panel.openFirewall [ listenPort ];
    })

    (mkIf cfg.binaryCache.enable {
      services.harmonia =
        let
          harmonia = options.services.harmonia;
          key = cfg.binaryCache.secretKeyFile;
          cache = {
            enable = true;
            settings.bind = "[::]:${toString cfg.binaryCache.port}";
          };
        in
        # Current nixpkgs has the cache under services.harmonia.cache (beside the
        # daemon) and keeps the old names as renamed options, which warn: use
        # the old names only where `cache` does not exist. signKeyPaths replaced
        # signKeyPath in nixpkgs 24.11.
        if harmonia ? cache then
          { cache = cache // { signKeyPaths = optional (key != null) key; }; }
        else if harmonia ? signKeyPaths then
          cache // { signKeyPaths = optional (key != null) key; }
        else
          cache // lib.optionalAttrs (key != null) { signKeyPath = key; };
      networking.firewall.allowedTCPPorts = optionals cfg.binaryCache.openFirewall [
        cfg.binaryCache.port
      ];
    })
  ]);
}
