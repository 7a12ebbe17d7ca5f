# Option types shared by the server and agent modules.
{ lib }:
let
  inherit (lib) mkOption types;
in
{
  # A reboot policy: `[reboot]` of agent.toml, `[hosts.<name>] reboot` of bento.toml
  # (core/src/config.rs, RebootPolicy).
  rebootModule = {
    options = {
      mode = mkOption {
        type = types.enum [
          "never"
          "window"
          "immediately"
        ];
        default = "never";
        description = ''
          When to reboot after an update changed the kernel, the initrd or the
          kernel modules (the running system then differs from the booted one):

          - `never`: the admin or the user reboots. A release that holds a
            `REBOOT` file still reboots when the kernel changed, as with the
            original shell tool.
          - `window`: the agent schedules the reboot inside the daily
            {option}`window` and announces it; the tray notifies the desktop
            user ahead of time and lets them postpone it, up to
            {option}`maxPostponeSecs`.
          - `immediately`: as soon as the update is done.
        '';
      };
      window = mkOption {
        type = types.nullOr (types.strMatching "[0-9]{1,2}:[0-9]{2}-[0-9]{1,2}:[0-9]{2}");
        default = null;
        example = "02:00-05:00";
        description = "Daily window `HH:MM-HH:MM` in the host's local time, for mode `window` (it may cross midnight).";
      };
      maxPostponeSecs = mkOption {
        type = types.ints.unsigned;
        default = 8 * 3600;
        description = "How long the users may postpone a scheduled reboot, at most, in seconds.";
      };
    };
  };

  # The TOML table of a reboot policy (the file's key names are snake_case).
  rebootSettings =
    r:
    {
      inherit (r) mode;
      max_postpone_secs = r.maxPostponeSecs;
    }
    // lib.optionalAttrs (r.window != null) { inherit (r) window; };

  rebootAssertion = where: r: {
    assertion = r.mode != "window" || r.window != null;
    message = "${where}.mode = \"window\" needs ${where}.window, like \"02:00-05:00\".";
  };
}
