# bento's NixOS modules evaluated by a module system of our own
# (./modules-lite.nix, a test double for nixpkgs' `lib`, which this machine does
# not have) against a stand-in for the NixOS options they set, for
# tests/tests/nixos_files.rs.
#
# The stand-in declares those options with the types NixOS gives them, and
# defines what NixOS itself defines there that bento's modules meet (the users
# root, nobody and sshd). `pkgs` is a stub: packages are fake store paths,
# `formats.toml.generate` writes the value as JSON (the test turns it into TOML
# and runs the real `check-config` on it), `runCommand` writes its script.
#
#   nix-instantiate --read-write-mode --eval --strict --json tests/nixos/eval.nix \
#     --arg modules '[ ./nixos/server.nix { services.bento.server.enable = true; } ]'
{
  modules ? [ ],
  # The server node of nixos/tests/vm.nix with this sftpMode, if not null. Its
  # keys come from `sshKeys`: a directory holding nixos/tests/ssh-keys.nix, as
  # nixpkgs does.
  vmServer ? null,
  sshKeys ? null,
  # The layout of services.harmonia: "cache" (current nixpkgs: services.harmonia.cache.*,
  # the old names renamed), "signKeyPaths" (24.11 to 25.11) or "signKeyPath" (older).
  harmonia ? "cache",
  lib ? import ./modules-lite.nix,
}:
let
  inherit (lib) mkOption types;

  fakePath = name: "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" name)}-${name}";
  fakeDrv =
    name: extra:
    let
      drv = {
        type = "derivation";
        inherit name;
        outPath = fakePath name;
        drvPath = fakePath "${name}.drv";
        outputName = "out";
        out = drv;
      }
      // extra;
    in
    drv;

  pkgs = {
    callPackage = path: args: fakeDrv (args.component or "bento") { };
    formats.toml =
      { }:
      {
        # What a TOML file can hold: scalars, and lists and tables of them.
        type =
          let
            tomlValue =
              types.oneOf [
                types.str
                types.int
                types.float
                types.bool
                types.path
                (types.listOf tomlValue)
                (types.attrsOf tomlValue)
              ]
              // {
                description = "TOML value";
              };
          in
          tomlValue;
        generate = name: value: builtins.toFile name (builtins.toJSON value);
      };
    # A real file holding the script, so that its path in the configuration
    # (a tmpfiles rule, environment.etc) leads back to it.
    runCommand = name: env: script: builtins.toFile name script;
    writeShellScript = name: text: fakeDrv name { bentoScript = text; };
    writeShellScriptBin = name: text: fakeDrv name { bentoScript = text; };
    writeText = name: text: fakeDrv name { bentoScript = text; };
    stdenv = {
      buildPlatform.canExecute = _: true;
      hostPlatform.system = "x86_64-linux";
    };
    xz.bin = fakeDrv "xz-bin" { };
  }
  // lib.genAttrs [
    "coreutils"
    "util-linux"
    "gitMinimal"
    "gnutar"
    "gzip"
    "openssh"
    "nix"
    "systemd"
    "harmonia"
  ] (n: fakeDrv n { });

  # NixOS's utils.escapeSystemdExecArgs, written from what systemd's ExecStart
  # parser expects (systemd.service(5), "Command lines"): each argument in
  # double quotes with C-style escapes, `%%` for a literal % (specifiers) and
  # `$$` for a literal $ (environment variables).
  utils = {
    escapeSystemdExecArgs = lib.concatMapStringsSep " " (
      arg:
      let
        s =
          if lib.isString arg || lib.isPath arg || lib.isInt arg || lib.isFloat arg || lib.isDerivation arg then
            toString arg
          else
            throw "escapeSystemdExecArgs: an argument must be a string, a path, a number or a package, not a ${builtins.typeOf arg}";
      in
      "\""
      + builtins.replaceStrings
        [ "\\" "\"" "\n" "\t" "%" "$" ]
        [ "\\\\" "\\\"" "\\n" "\\t" "%%" "$$" ]
        s
      + "\""
    );
  };

  # systemd's option values (nixpkgs: utils.systemdUtils.unitOptions.unitOption).
  unitOption = types.oneOf [
    types.bool
    types.int
    types.str
    types.path
    (types.listOf (
      types.oneOf [
        types.bool
        types.int
        types.str
      ]
    ))
  ];
  strList = types.listOf types.str;
  unitModule = {
    options = {
      description = mkOption {
        type = types.str;
        default = "";
      };
      wantedBy = mkOption {
        type = strList;
        default = [ ];
      };
      wants = mkOption {
        type = strList;
        default = [ ];
      };
      after = mkOption {
        type = strList;
        default = [ ];
      };
      requires = mkOption {
        type = strList;
        default = [ ];
      };
      partOf = mkOption {
        type = strList;
        default = [ ];
      };
      requisite = mkOption {
        type = strList;
        default = [ ];
      };
      unitConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
    };
  };
  serviceModule = {
    imports = [ unitModule ];
    options = {
      path = mkOption {
        type = types.listOf (types.either types.package types.str);
        default = [ ];
      };
      environment = mkOption {
        type = types.attrsOf (
          types.nullOr (
            types.oneOf [
              types.str
              types.path
              types.package
            ]
          )
        );
        default = { };
      };
      serviceConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      restartTriggers = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      restartIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
    };
  };
  timerModule = {
    imports = [ unitModule ];
    options.timerConfig = mkOption {
      type = types.attrsOf unitOption;
      default = { };
    };
  };

  userModule =
    { name, ... }:
    {
      options = {
        name = mkOption {
          type = types.str;
          default = name;
        };
        uid = mkOption {
          type = types.nullOr types.int;
          default = null;
        };
        isSystemUser = mkOption {
          type = types.bool;
          default = false;
        };
        group = mkOption {
          type = types.str;
          default = "";
        };
        home = mkOption {
          type = types.str;
          default = "/var/empty";
        };
        createHome = mkOption {
          type = types.bool;
          default = false;
        };
        description = mkOption {
          type = types.str;
          default = "";
        };
        openssh.authorizedKeys.keys = mkOption {
          type = strList;
          default = [ ];
        };
      };
    };

  optionsOfNixos =
    { config, ... }:
    {
      _file = "NixOS (its stand-in, tests/nixos/eval.nix)";
      options = {
        assertions = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
        };
        warnings = mkOption {
          type = strList;
          default = [ ];
        };
        users.users = mkOption {
          type = types.attrsOf (types.submodule userModule);
          default = { };
        };
        users.groups = mkOption {
          type = types.attrsOf (
            types.submodule {
              options.gid = mkOption {
                type = types.nullOr types.int;
                default = null;
              };
            }
          );
          default = { };
        };
        systemd.services = mkOption {
          type = types.attrsOf (types.submodule serviceModule);
          default = { };
        };
        systemd.user.services = mkOption {
          type = types.attrsOf (types.submodule serviceModule);
          default = { };
        };
        systemd.timers = mkOption {
          type = types.attrsOf (types.submodule timerModule);
          default = { };
        };
        systemd.tmpfiles.rules = mkOption {
          type = strList;
          default = [ ];
        };
        systemd.package = mkOption {
          type = types.package;
          default = pkgs.systemd;
        };
        services.openssh = {
          enable = mkOption {
            type = types.bool;
            default = false;
          };
          ports = mkOption {
            type = types.listOf types.port;
            default = [ 22 ];
          };
          extraConfig = mkOption {
            type = types.lines;
            default = "";
          };
        };
        programs.ssh.package = mkOption {
          type = types.package;
          default = pkgs.openssh;
        };
        programs.ssh.knownHosts = mkOption {
          type = types.attrsOf (
            types.submodule {
              options.hostNames = mkOption {
                type = strList;
                default = [ ];
              };
              options.publicKey = mkOption {
                type = types.nullOr types.str;
                default = null;
              };
            }
          );
          default = { };
        };
        networking.hostName = mkOption {
          type = types.str;
          default = "server";
        };
        networking.fqdnOrHostName = mkOption {
          type = types.str;
          default = config.networking.hostName;
        };
        networking.proxy.envVars = mkOption {
          type = types.attrs;
          default = { };
        };
        networking.firewall.allowedTCPPorts = mkOption {
          type = types.listOf types.port;
          default = [ ];
        };
        nix.settings = mkOption {
          type = types.submodule { freeformType = types.attrsOf types.anything; };
          default = { };
        };
        nix.package = mkOption {
          type = types.package;
          default = pkgs.nix;
        };
        nix.nixPath = mkOption {
          type = strList;
          default = [ "nixpkgs=/nix/var/nix/profiles/per-user/root/channels/nixos" ];
        };
        nix.envVars = mkOption {
          type = types.attrs;
          default = { };
        };
        # Read by nothing here (the VM test's server node sets them).
        system.extraDependencies = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
        };
        virtualisation = mkOption {
          type = types.attrsOf types.anything;
          default = { };
        };
        environment.systemPackages = mkOption {
          type = types.listOf types.package;
          default = [ ];
        };
        environment.sessionVariables = mkOption {
          type = types.attrsOf types.str;
          default = { };
        };
        environment.etc = mkOption {
          type = types.attrsOf (
            types.submodule {
              options.source = mkOption {
                type = types.nullOr (types.either types.path types.package);
                default = null;
              };
              options.text = mkOption {
                type = types.nullOr types.lines;
                default = null;
              };
              options.mode = mkOption {
                type = types.str;
                default = "symlink";
              };
            }
          );
          default = { };
        };
      };

      # What NixOS defines there itself (users-groups.nix, sshd.nix).
      config = lib.mkMerge [
        {
          users.users.root = {
            uid = 0;
            description = "System administrator";
            home = "/root";
            group = "root";
          };
          users.users.nobody = {
            uid = 65534;
            isSystemUser = true;
            description = "Unprivileged account (don't use!)";
            group = "nogroup";
          };
        }
        (lib.mkIf config.services.openssh.enable {
          users.users.sshd = {
            isSystemUser = true;
            group = "sshd";
            description = "SSH privilege separation user";
          };
          users.groups.sshd = { };
        })
      ];
    };

  harmoniaOptions =
    let
      cacheOptions = {
        enable = lib.mkEnableOption "Harmonia";
        signKeyPaths = mkOption {
          type = types.listOf types.path;
          default = [ ];
        };
        settings = mkOption {
          type = types.submodule { freeformType = (pkgs.formats.toml { }).type; };
          default = { };
        };
      };
    in
    {
      # nixpkgs' harmonia module after the cache/daemon split: the old names are
      # renamed options (lib.mkRenamedOptionModule warns when they are used).
      cache = {
        imports = map (n: lib.mkRenamedOptionModule [ "services" "harmonia" n ] [ "services" "harmonia" "cache" n ]) [
          "enable"
          "signKeyPaths"
          "settings"
        ];
        options.services.harmonia.cache = cacheOptions;
      };
      signKeyPaths.options.services.harmonia = cacheOptions;
      signKeyPath.options.services.harmonia = removeAttrs cacheOptions [ "signKeyPaths" ] // {
        signKeyPath = mkOption {
          type = types.nullOr types.path;
          default = null;
        };
      };
    }
    .${harmonia};

  evaluated = lib.evalModules {
    modules = [
      optionsOfNixos
      harmoniaOptions
      { _module.args = { inherit pkgs utils; }; }
    ]
    ++ lib.optional (vmServer != null)
      (
        (import ../../nixos/tests/vm.nix { sftpMode = vmServer; }) {
          hostPkgs = pkgs // {
            path = sshKeys;
            curl = fakeDrv "curl" { };
            jq = fakeDrv "jq" { };
          };
          inherit lib;
        }
      ).nodes.server
    ++ modules;
  };
  inherit (evaluated) config;

  # What the module's build check runs, read back from the runCommand stub's
  # file: the script, and the generated file it checks and copies to $out.
  generated =
    path:
    let
      script = builtins.readFile path;
      m = builtins.match ".*cp (/nix/store/[^ \n]+) \\$out.*" script;
      file = if m == null then null else builtins.head m;
    in
    {
      inherit script file;
      value = if file == null then null else builtins.fromJSON (builtins.readFile file);
    };

  server = config.services.bento.server or { enable = false; };
  agent = config.services.bento.agent or { enable = false; };
  bentoTomlRule = lib.findFirst (r: lib.hasSuffix "/bento.toml" (builtins.elemAt (lib.splitString " " r) 1)) null config.systemd.tmpfiles.rules;
in
{
  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  inherit (config) warnings;
  sshdExtraConfig = config.services.openssh.extraConfig;
  openFirewall = config.networking.firewall.allowedTCPPorts;
  users = lib.mapAttrs (_: u: {
    inherit (u)
      group
      description
      home
      isSystemUser
      ;
    keys = u.openssh.authorizedKeys.keys;
  }) config.users.users;
  services = lib.mapAttrs (_: s: {
    inherit (s) restartTriggers restartIfChanged;
    ExecStart = s.serviceConfig.ExecStart or null;
    MemoryMax = s.serviceConfig.MemoryMax or null;
  }) config.systemd.services;
  userServices = lib.mapAttrs (_: s: {
    ExecStart = s.serviceConfig.ExecStart or null;
  }) config.systemd.user.services;
  tmpfiles = config.systemd.tmpfiles.rules;
  # The options of this layout only: reading a renamed option traces a warning.
  harmonia =
    if harmonia == "cache" then
      { inherit (config.services.harmonia) cache; }
    else
      removeAttrs config.services.harmonia [ "package" ];
  packages = {
    server = if server.enable then "${server.package}" else null;
    agent = if agent.enable then "${agent.package}" else null;
  };
  nixSettings = config.nix.settings;
  # The bento.toml the server's build checks and links into the bento directory.
  bentoToml =
    if server.enable && bentoTomlRule != null then
      generated (lib.last (lib.splitString " " bentoTomlRule))
    else
      null;
  agentToml =
    if agent.enable then generated config.environment.etc."bento/agent.toml".source else null;
}
