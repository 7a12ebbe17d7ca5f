# What the server module generates for the OpenSSH mode, written with builtins
# only: the test suite (tests/tests/nixos_files.rs) evaluates these functions
# with a bare `nix-instantiate`, without nixpkgs, and compares them with what
# the OpenSSH-mode tests use.
{
  # The sshd Match block, from the file tests/src/sshd.rs includes too.
  sshdMatchBlock =
    { group, chrootDir }:
    builtins.replaceStrings [ "@group@" "@chroot@" ] [ group chrootDir ] (
      builtins.readFile ./sshd-match.conf
    );

  # One system user per host, named like the host (the Match block chroots to
  # <chrootDir>/%u), in the group the Match block names. Home "/" is the root
  # of the chroot once sshd has entered it; there is no shell to log in to.
  hostUsers =
    { hosts, group }:
    builtins.mapAttrs (name: host: {
      isSystemUser = true;
      inherit group;
      home = "/";
      createHome = false;
      description = "bento host ${name}";
      openssh.authorizedKeys.keys = host.keys;
    }) hosts;

  # systemd-tmpfiles rules for the chroot: the layout `bento deploy` makes when
  # it runs as root (core/src/chroot.rs, Chroot::ensure_host), so that every
  # later publication works as the unprivileged publisher.
  #   <chrootDir>/<host>/        root:root 0755 (sshd's ChrootDirectory rule)
  #     .releases/               the publisher's
  #     logs/                    the host user's: the only place it writes
  #     last_change_date         the publisher's
  #     config -> .releases/current
  #
  # With the embedded SFTP server (`embedded = true`) there are no host users and
  # no sshd rules: everything belongs to the publisher, which also runs the
  # server (Chroot::embedded_owners).
  chrootRules =
    {
      chrootDir,
      hosts,
      group,
      publishUser,
      publishGroup,
      embedded ? false,
    }:
    let
      publisher = "${publishUser} ${publishGroup}";
      dirOwner = if embedded then publisher else "root root";
      logsOwner = name: if embedded then publisher else "${name} ${group}";
    in
    [
      "d ${chrootDir} 0755 ${dirOwner} - -"
      "f ${chrootDir}/states.txt 0644 ${publisher} - -"
    ]
    ++ builtins.concatMap (
      name:
      let
        dir = "${chrootDir}/${name}";
      in
      [
        "d ${dir} 0755 ${dirOwner} - -"
        "d ${dir}/.releases 0755 ${publisher} - -"
        "d ${dir}/logs 0755 ${logsOwner name} - -"
        "f ${dir}/last_change_date 0644 ${publisher} - -"
        "L+ ${dir}/config - - - - .releases/current"
      ]
    ) (builtins.attrNames hosts);

  # Host names the OpenSSH mode can use: they are system user names too, which
  # NixOS keeps under 32 characters (users-groups.nix).
  validHostUser = name: builtins.match "[a-z_][a-z0-9_-]{0,30}" name != null;
}
