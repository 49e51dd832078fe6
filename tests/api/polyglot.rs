//! A service in another language: `examples/python/wxauth_login.py` (grpcio, stubs generated
//! from `proto/` at run time) signs a user in through wxauth, reads its error details, signs
//! the same person in through the mini program and finds their web account by unionid.

use std::process::Command;

use crate::helpers::{Backend, MINI_APPID, MP_APPID, PASSPORT_KEY, spawn_app};

/// The Python with grpcio that `scripts/setup` prepares (or `WXAUTH_PYTHON`).
fn python() -> String {
    if let Ok(python) = std::env::var("WXAUTH_PYTHON") {
        return python;
    }
    let venv = std::path::Path::new(&std::env::var("HOME").unwrap_or_default())
        .join(".cache/wxauth/py-client-venv/bin/python");
    assert!(
        venv.exists(),
        "no Python client env at {} (scripts/setup makes it from examples/python/requirements.txt; or set WXAUTH_PYTHON)",
        venv.display()
    );
    venv.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_service_signs_a_user_in_and_reads_error_details() {
    let app = spawn_app(Backend::Redis).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python/wxauth_login.py");
    let args = [
        script.to_owned(),
        "--grpc".into(),
        app.grpc_addr.to_string(),
        "--relay".into(),
        format!("http://{}", app.public_addr),
        "--app".into(),
        "mp".into(),
        "--key".into(),
        PASSPORT_KEY.into(),
        "--return-url".into(),
        "https://passport.example.com/login/".into(),
        "--sim".into(),
        format!("http://{}", app.sim_addr),
        "--mini-app".into(),
        "mini".into(),
        "--mini-appid".into(),
        MINI_APPID.into(),
    ];
    let output = tokio::task::spawn_blocking(move || Command::new(python()).args(args).output())
        .await
        .expect("join")
        .expect("python runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the Python client failed: {stderr}");
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object");

    let openid = app.sim.openid(MP_APPID, "alice").expect("alice");
    assert_eq!(seen["authorize_url_ends_with"], "#wechat_redirect");
    assert_eq!(seen["returned_to"], "https://passport.example.com/login/");
    assert_eq!(seen["state_matches"], true);
    assert_eq!(seen["openid"], openid.as_str());
    assert_eq!(seen["same_result_again"], true, "no 40163 for a reload");
    assert_eq!(seen["nickname"], "Alice 爱丽丝");
    assert_eq!(seen["profile_nickname"], "Alice 爱丽丝");
    assert!(seen["profile_fetch_time"].as_i64().is_some_and(|t| t > 1_700_000_000));
    assert_eq!(seen["unknown_user"], serde_json::json!({"code": "NOT_FOUND", "reason": "TOKEN_NOT_FOUND"}));
    assert_eq!(seen["injected_code"], serde_json::json!({"code": "PERMISSION_DENIED", "reason": "CODE_NOT_FROM_FLOW"}));
    assert_eq!(seen["mini_openid_differs"], true);
    assert_eq!(seen["mini_unionid_matches"], true, "one person, one unionid");
    assert_eq!(seen["accounts"], serde_json::json!(["mini:APP_KIND_MINI_PROGRAM", "mp:APP_KIND_OFFICIAL_ACCOUNT"]));
    assert_eq!(seen["web_account_by_unionid"], openid.as_str(), "the web account, found by unionid");
    assert_eq!(seen["forgot_a_token"], true);
    assert_eq!(seen["after_forget"], "TOKEN_NOT_FOUND");
    assert_eq!(app.sim.calls(wxauth::sim::Endpoint::UserInfo), 1, "GetUserInfo came from the cache");
}
