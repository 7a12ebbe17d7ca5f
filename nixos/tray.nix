# services.bento.tray: the tray icon of a bento workstation, for every desktop
# user of the machine. It follows the local agent over its socket: run the
# agent in daemon mode (services.bento.agent.mode).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    escapeShellArg
    literalExpression
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    optional
    optionalString
    types
    ;

  cfg = config.services.bento.tray;
  agent = config.services.bento.agent;

  # One command for both ways of starting it.
  trayCommand = pkgs.writeShellScript "bento-tray" ''
    exec ${cfg.package}/bin/bento-tray --socket ${escapeShellArg cfg.socket} ${
      optionalString (cfg.rebootCommand != null) "--reboot-command ${escapeShellArg cfg.rebootCommand}"
    } "$@"
  '';
in
{
  # For services.bento.agent's options (mode, socket): importing it enables nothing.
  imports = [ ./agent.nix ];

  options.services.bento.tray = {
    enable = mkEnableOption "the bento tray icon (update status, notifications, restart prompts) in the desktop sessions of this machine";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { component = "bento-tray"; };
      defaultText = literalExpression "pkgs.callPackage \"\${bento}/nixos/package.nix\" { component = \"bento-tray\"; }";
      description = "The bento-tray package (the tray and its details window).";
    };

    socket = mkOption {
      type = types.str;
      default = "${agent.settings.runtime_dir or "/run/bento"}/agent.sock";
      defaultText = literalExpression "\"/run/bento/agent.sock\"";
      description = "The agent's socket.";
    };

    autostart = mkOption {
      type = types.enum [
        "systemd"
        "xdg"
      ];
      default = "systemd";
      description = ''
        How the tray starts with a session. `systemd`: the user service
        `bento-tray`, part of `graphical-session.target` (GNOME, KDE Plasma and
        other sessions that start that target). `xdg`: an XDG autostart entry,
        for desktops that do not. One or the other, never both: the icon would
        show twice.
      '';
    };

    rebootCommand = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "systemctl reboot";
      description = ''
        What "Restart now" runs (words split on spaces, no shell). Null: ask
        logind, which lets the user of a local session restart.
      '';
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      environment.systemPackages = [ cfg.package ];

      warnings =
        optional (!agent.enable) ''
          services.bento.tray is enabled but services.bento.agent is not: the tray will
          show "The update service is not running".
        ''
        ++ optional (agent.enable && agent.mode != "daemon") ''
          services.bento.tray: services.bento.agent.mode is "timer", which serves no
          socket; the tray needs mode = "daemon".
        '';
    }

    (mkIf (cfg.autostart == "systemd") {
      systemd.user.services.bento-tray = {
        description = "Software update status in the tray (bento)";
        partOf = [ "graphical-session.target" ];
        after = [ "graphical-session.target" ];
        requisite = [ "graphical-session.target" ];
        wantedBy = [ "graphical-session.target" ];
        # Not in the sessions of system users (a display manager's greeter).
        unitConfig.ConditionUser = "!@system";
        environment.BENTO_TRAY_LOG = "info";
        serviceConfig = {
          Type = "exec";
          ExecStart = "${trayCommand}";
          Restart = "on-failure";
          RestartSec = 5;
        };
      };
    })

    (mkIf (cfg.autostart == "xdg") {
      # As tray/data/bento-tray.desktop, started through the wrapper above.
      environment.etc."xdg/autostart/bento-tray.desktop".text = ''
        [Desktop Entry]
        Type=Application
        Name=Software updates
        GenericName=Update status
        Comment=Shows when this computer was updated and when it needs a restart
        Exec=${trayCommand}
        Icon=software-update-available
        Terminal=false
        Categories=System;
        NoDisplay=true
        X-GNOME-Autostart-enabled=true
        X-GNOME-AutoRestart=true
      '';
    })
  ]);
}
