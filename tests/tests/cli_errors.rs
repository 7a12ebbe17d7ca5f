//! What the admin reads when something is wrong: nix's own error with the admin's
//! file and line, hosts counted and named (not directories), typos in `--host`,
//! results on stdout and diagnostics on stderr, each error said once, and
//! `check-config` catching settings for hosts that do not exist or cannot log in.

use std::fs;

use anyhow::Result;
use bento_tests::cli::{current_release, BentoFixture};
use bento_tests::sshd::unique_prefix;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The result line of `host` (`<host> <padding> <what happened>`).
fn result_line<'a>(out: &'a str, host: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(host))
        .unwrap_or_else(|| panic!("no result line for {host} in:\n{out}"))
}

/// A flake directory with three hosts and one non-flake host.
fn fleet(label: &str) -> Result<(BentoFixture, [String; 3], String, String)> {
    let mut f = BentoFixture::new(label)?;
    let p = unique_prefix();
    let hosts = [format!("{p}-web"), format!("{p}-db"), format!("{p}-mail")];
    let flake_dir = format!("{p}-office");
    f.fleet.flake_host(
        &flake_dir,
        &hosts.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    let lab = format!("{p}-lab");
    f.fleet.nonflake_host(&lab)?;
    Ok((f, hosts, flake_dir, lab))
}

#[test]
fn a_syntax_error_shows_nix_message_at_the_admins_file_and_line() -> Result<()> {
    let (f, _, _, lab) = fleet("err-syntax")?;
    let conf = f.fleet.host_dir(&lab).join("configuration.nix");
    // Line 3, column 10: the `;` where a value should be.
    fs::write(&conf, "{\n  networking.hostName = \"x\";\n  boot = ;\n}\n")?;
    let out = f.run(&["build", "--host", &lab])?;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let res = stdout(&out);
    assert!(res.contains("error: syntax error"), "{res}");
    assert!(
        res.contains(&format!("hosts/{lab}/configuration.nix:3:")),
        "the position must name the admin's file: {res}"
    );
    // nix's source excerpt comes along, not just the caret line.
    assert!(res.contains("boot = ;"), "{res}");
    assert!(!res.contains("bento-stage"), "{res}");
    assert!(!stderr(&out).contains("bento-stage"), "{}", stderr(&out));
    // Once: in the result, not again in the progress lines.
    assert_eq!(
        format!("{res}{}", stderr(&out)).matches("boot = ;").count(),
        1
    );
    Ok(())
}

#[test]
fn a_flake_that_stops_evaluating_fails_each_of_its_hosts_by_name() -> Result<()> {
    let (f, hosts, flake_dir, lab) = fleet("err-flake")?;
    f.ok(&["deploy"])?;
    let flake = f.fleet.host_dir(&flake_dir).join("flake.nix");
    let text = fs::read_to_string(&flake)?;
    // An undefined variable in the flake's outputs: nix cannot even list the hosts.
    let broken = text.replacen(
        "nixosConfigurations = {",
        "nixosConfigurations = undefinedThing // {",
        1,
    );
    assert_ne!(broken, text, "the toy flake changed shape");
    fs::write(&flake, &broken)?;
    let line = broken
        .lines()
        .position(|l| l.contains("undefinedThing"))
        .unwrap()
        + 1;

    let out = f.run(&["deploy"])?;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let res = stdout(&out);
    assert!(
        res.contains("4 hosts: 0 published, 1 unchanged, 3 failed"),
        "hosts are counted, not directories: {res}"
    );
    for h in &hosts {
        assert!(result_line(&res, h).contains("FAILED"), "{res}");
    }
    assert!(
        res.contains("error: undefined variable 'undefinedThing'"),
        "{res}"
    );
    assert!(
        res.contains(&format!("hosts/{flake_dir}/flake.nix:{line}:")),
        "the store copy of the flake is mapped back to the admin's file: {res}"
    );
    assert!(
        !res.contains("/nix/store/") || !res.contains("-source/flake.nix"),
        "{res}"
    );
    // Each host's line names the error; the whole block comes once for the three.
    assert_eq!(
        res.matches(&format!("flake.nix:{line}:")).count(),
        1,
        "{res}"
    );
    assert!(current_release(&f.host_chroot(&lab)).is_some());

    // One host of the broken flake: reported under its own name.
    let out = f.run(&["build", "--host", &hosts[1]])?;
    assert_eq!(out.status.code(), Some(1));
    let res = stdout(&out);
    assert!(res.contains("1 host: 0 built, 1 failed"), "{res}");
    assert!(result_line(&res, &hosts[1]).contains("FAILED"), "{res}");
    assert!(
        !res.lines()
            .any(|l| l.split_whitespace().next() == Some(flake_dir.as_str())),
        "not under the directory's name: {res}"
    );

    // The failure is remembered for the panel and status: since when, and why.
    let state = bento_core::buildstate::BuildState::load(&f.bento_dir());
    let b = state.host(&hosts[0]).expect("build record");
    assert!(b.failing_since.is_some() && b.last_ok.is_some(), "{b:?}");
    assert!(b.error.as_deref().unwrap().contains("undefinedThing"));
    fs::write(&flake, &text)?;
    f.ok(&["build"])?;
    let state = bento_core::buildstate::BuildState::load(&f.bento_dir());
    assert!(!state.host(&hosts[0]).unwrap().failing());
    Ok(())
}

#[test]
fn a_host_name_that_matches_nothing_exits_2_with_a_suggestion() -> Result<()> {
    let (f, hosts, _, _) = fleet("err-typo")?;
    let typo = hosts[0].replace("-web", "-webb");
    for cmd in [&["deploy"][..], &["build"], &["build", "dry-build"]] {
        let mut args = cmd.to_vec();
        args.extend(["--host", typo.as_str()]);
        let out = f.run(&args)?;
        assert_eq!(
            out.status.code(),
            Some(2),
            "bento {args:?}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(&format!(
                "no host named {typo} (did you mean {}?)",
                hosts[0]
            )),
            "{}",
            stderr(&out)
        );
        assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    }
    assert!(
        !f.chroot().join(&hosts[0]).exists(),
        "nothing was published"
    );

    f.ok(&["deploy"])?;
    let out = f.run(&["status", "--once", "--host", &typo])?;
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(&format!("did you mean {}?", hosts[0])),
        "{}",
        stderr(&out)
    );
    let out = f.run(&["status", "--json", "--host", "nosuchhostatall"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no host named nosuchhostatall"));
    assert!(stdout(&out).is_empty());
    Ok(())
}

#[test]
fn results_go_to_stdout_and_progress_to_stderr() -> Result<()> {
    let (f, hosts, _, lab) = fleet("err-streams")?;
    let out = f.ok(&["deploy"])?;
    let (res, prog) = (stdout(&out), stderr(&out));
    assert!(
        res.contains("4 hosts: 4 published, 0 unchanged, 0 failed"),
        "{res}"
    );
    assert!(!prog.contains("4 hosts:"), "{prog}");
    for h in hosts.iter().chain([&lab]) {
        assert!(result_line(&res, h).contains(" published "), "{res}");
        assert!(prog.contains(&format!("{h}: building")), "{prog}");
    }
    let out = f.ok(&["status", "--once"])?;
    assert!(stdout(&out).contains(&hosts[0]));
    Ok(())
}

#[test]
fn an_error_is_printed_once() -> Result<()> {
    let (f, _, _, _) = fleet("err-once")?;
    let out = f
        .cmd()
        .args(["-C", "/nonexistent-bento-dir", "status"])
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    Ok(())
}

#[test]
fn check_config_refuses_settings_of_unknown_hosts_and_sftp_hosts_without_keys() -> Result<()> {
    let (f, hosts, _, lab) = fleet("err-check")?;
    let out = f.ok(&["check-config"])?;
    assert!(stdout(&out).contains("4 hosts"), "{}", stdout(&out));

    let typo = hosts[1].replace("-db", "-bd");
    f.write_config(&format!(
        "\n[hosts.{}]\ntags = [\"x\"]\n\n[hosts.{typo}]\ntags = [\"y\"]\n",
        hosts[0]
    ))?;
    let out = f.run(&["check-config"])?;
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let err = stderr(&out);
    let line = fs::read_to_string(f.bento_dir().join("bento.toml"))?
        .lines()
        .position(|l| l.contains(&typo))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!(
            "bento.toml:{line}: [hosts.{typo}]: there is no host {typo} in hosts/ (did you mean {}?)",
            hosts[1]
        )),
        "{err}"
    );

    // With [sftp], a host without keys can never log in.
    let mut cfg = String::from("\n[sftp]\nlisten = \"127.0.0.1:0\"\n");
    for (i, h) in hosts.iter().enumerate() {
        if i == 0 {
            cfg.push_str(&format!("\n[hosts.{h}]\n"));
        } else {
            let key = f.dir.join(format!("key-{i}"));
            bento_tests::embedded::generate_key(&key, h)?;
            let public = fs::read_to_string(key.with_extension("pub"))?;
            cfg.push_str(&format!("\n[hosts.{h}]\nkeys = [{:?}]\n", public.trim()));
        }
    }
    f.write_config(&cfg)?;
    let out = f.run(&["check-config"])?;
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("[hosts.{}] has no keys", hosts[0])),
        "{err}"
    );
    assert!(
        err.contains(&format!("host {lab} (hosts/{lab}) has no keys")),
        "{err}"
    );
    assert!(err.contains("keys = ["), "says what to do: {err}");
    Ok(())
}
