//! The command line: `--help` lists the commands, `--version` names the release, each command
//! has its own help, and a usage error is one line on stderr with exit 2 (a failure at run
//! time: one line, exit 1), never a backtrace.

use std::process::Output;

/// `wxauth args`, with backtraces asked for (they must not appear) and no config in the env.
fn wxauth(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_wxauth"))
        .args(args)
        .env_remove("WXAUTH_CONFIG")
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("wxauth runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

#[test]
fn help_lists_every_command_and_version_names_the_release() {
    let help = wxauth(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let stdout = text(&help.stdout);
    for line in [
        "Usage: wxauth [OPTIONS] [COMMAND]",
        "  serve    Serve the gRPC API, the relay and the admin listener (the default)",
        "  check    Validate a config and print what it amounts to as JSON, without secrets",
        "  gen-key  Print a new sealing-key line for `store.sealing_keys`",
        "  sim      Run the WeChat simulator alone",
        "      --config <FILE>",
    ] {
        assert!(stdout.lines().any(|l| l.starts_with(line)), "no {line:?} in\n{stdout}");
    }

    let version = wxauth(&["--version"]);
    assert_eq!(version.status.code(), Some(0));
    assert_eq!(text(&version.stdout), format!("wxauth {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn each_command_has_its_own_help() {
    for (command, usage) in [
        ("serve", "Usage: wxauth serve [OPTIONS]"),
        ("check", "Usage: wxauth check [OPTIONS]"),
        ("gen-key", "Usage: wxauth gen-key [ID]"),
        ("sim", "Usage: wxauth sim [ADDR]"),
    ] {
        let help = wxauth(&[command, "--help"]);
        assert_eq!(help.status.code(), Some(0), "{command}");
        let stdout = text(&help.stdout);
        assert!(stdout.contains(usage), "{command}:\n{stdout}");
    }
    assert!(text(&wxauth(&["gen-key", "--help"]).stdout).contains("0..=255"));
    assert!(text(&wxauth(&["sim", "--help"]).stdout).contains(wxauth::dev::SIM_ADDR), "the default address");
}

#[test]
fn a_usage_error_is_one_line_and_exits_2() {
    for args in [
        &["--nope"][..],
        &["bogus"],
        &["gen-key", "256"],
        &["gen-key", "one"],
        &["sim", "127.0.0.1:1", "extra"],
        &["--config"],
        &["check"],
    ] {
        let output = wxauth(args);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line, got\n{stderr}");
        assert!(stderr.starts_with("wxauth: ") && stderr.trim_end().ends_with("(see wxauth --help)"), "{stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
    assert_eq!(
        text(&wxauth(&["check"]).stderr),
        "wxauth: check needs --config FILE (or WXAUTH_CONFIG) (see wxauth --help)\n"
    );
}

#[test]
fn a_failure_at_run_time_is_one_line_and_exits_1() {
    let output = wxauth(&["check", "--config", "/nonexistent/wxauth.toml"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "no backtrace:\n{stderr}");
    assert!(stderr.starts_with("wxauth: ") && stderr.contains("/nonexistent/wxauth.toml"), "{stderr}");
}

#[test]
fn gen_key_prints_one_key_line_of_the_id() {
    use base64::Engine as _;
    for (args, id) in [(&["gen-key"][..], "1"), (&["gen-key", "7"], "7")] {
        let output = wxauth(args);
        assert_eq!(output.status.code(), Some(0));
        let stdout = text(&output.stdout);
        let (key_id, key) = stdout.trim_end().split_once(':').expect("<id>:<key>");
        assert_eq!(key_id, id);
        let bytes = base64::engine::general_purpose::STANDARD.decode(key).expect("base64");
        assert_eq!(bytes.len(), 32);
    }
}
