//! OpenID Connect relying parties nobody here wrote (issue 22) sign alice in through wxauth's
//! provider: `openid-client` (npm, an OpenID Certified RP library, `examples/oidc-node/rp.js`,
//! pinned by its `package-lock.json`) and Authlib (PyPI, with joserfc for the JOSE part,
//! `examples/oidc-python/rp.py`, pinned by its `requirements.txt`), both installed by
//! `./scripts/setup`: discovery, PKCE, state and nonce, the code grant with the libraries' own
//! ID-token checks (signature from the JWKS, issuer, audience, expiry, nonce), then userinfo. The
//! browser's part (the consent page, the relay) is the test's, as in `oidc.rs`.
//!
//! The libraries check that the issuer is the URL discovery was fetched from, so this provider's
//! callback URL is the real loopback address of its public listener (a port chosen first), and
//! the simulator's callback domain is that address.

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use wxauth::config::Settings;
use wxauth::sim::{SimConfig, Simulator};

use crate::helpers::{CALLBACK_HOST, RedisServer, free_port, settings_toml, spawn_settings};
use crate::oidc::{
    GRAFANA, GRAFANA_REDIRECT, GRAFANA_SECRET, current_key, ec_key, es256_grafana_config, oidc_config, through_wechat,
};

/// A provider whose issuer is `http://127.0.0.1:{port}`, on Redis.
async fn provider_on_loopback() -> crate::helpers::TestApp {
    provider_fronted_with(None, &oidc_config(&current_key())).await
}

/// A provider on loopback, on Redis, with the `[oidc]` section `oidc`.
async fn provider_on_loopback_with(oidc: &str) -> crate::helpers::TestApp {
    provider_fronted_with(None, oidc).await
}

/// A provider whose issuer (and the simulator's callback domain) is `front`, the address of
/// something in front of its public listener (a proxy of the test's), or, without one, its
/// own loopback address.
pub(crate) async fn provider_fronted(front: Option<std::net::SocketAddr>) -> crate::helpers::TestApp {
    provider_fronted_with(front, &oidc_config(&current_key())).await
}

/// [`provider_fronted`] with the `[oidc]` section `oidc`.
async fn provider_fronted_with(front: Option<std::net::SocketAddr>, oidc: &str) -> crate::helpers::TestApp {
    let origin = front.map_or_else(|| format!("127.0.0.1:{}", free_port()), |a| a.to_string());
    let public = if front.is_some() { "127.0.0.1:0".to_owned() } else { origin.clone() };
    let mut config = SimConfig::demo();
    for app in &mut config.apps {
        app.callback_domain = origin.clone();
    }
    let (sim, sim_addr) = Simulator::spawn_local(config).await.expect("simulator");
    let redis = std::sync::Arc::new(tokio::sync::Mutex::new(RedisServer::start().await));
    let store = format!("kind = \"redis\"\nurl = \"{}\"", redis.lock().await.url());
    let toml = settings_toml(sim_addr, &store, oidc)
        .replace("public_addr = \"127.0.0.1:0\"", &format!("public_addr = \"{public}\""))
        .replace(&format!("https://{CALLBACK_HOST}/wechat/callback"), &format!("http://{origin}/wechat/callback"));
    let settings = Settings::from_toml(&toml).expect("settings");
    spawn_settings(sim, sim_addr, Some(redis), settings).await
}

/// A relying party run as `program args ISSUER CLIENT_ID CLIENT_SECRET REDIRECT_URI` in `dir`,
/// speaking rp.js's protocol: its first JSON line (the authorization URL, which must come from
/// discovery) and the stdin it reads the browser's return URL from.
pub(crate) struct Rp {
    child: tokio::process::Child,
    said: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    issuer: String,
    pub(crate) authorize_url: String,
}

impl Rp {
    async fn start(app: &crate::helpers::TestApp, program: &str, args: &[&str], dir: &Path) -> Self {
        Self::start_at_with(&format!("http://{}", app.public_addr), program, args, dir, &[]).await
    }

    /// As [`Self::start`], with `tail` after the four arguments (the registered ID token alg).
    async fn start_with(
        app: &crate::helpers::TestApp,
        program: &str,
        args: &[&str],
        dir: &Path,
        tail: &[&str],
    ) -> Self {
        Self::start_at_with(&format!("http://{}", app.public_addr), program, args, dir, tail).await
    }

    /// [`Rp::start`] with the issuer given (a provider behind a proxy: the proxy's origin).
    pub(crate) async fn start_at(issuer: &str, program: &str, args: &[&str], dir: &Path) -> Self {
        Self::start_at_with(issuer, program, args, dir, &[]).await
    }

    /// [`Rp::start_at`] with `tail` after the four arguments.
    async fn start_at_with(issuer: &str, program: &str, args: &[&str], dir: &Path, tail: &[&str]) -> Self {
        let issuer = issuer.to_owned();
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .args([issuer.as_str(), GRAFANA, GRAFANA_SECRET, GRAFANA_REDIRECT])
            .args(tail)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{program} runs: {e}"));
        let mut said = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = Self::line(&mut said).await;
        let authorize_url = first["authorize_url"].as_str().unwrap_or_else(|| panic!("{first}")).to_owned();
        assert!(authorize_url.starts_with(&format!("{issuer}/oidc/authorize?")), "from discovery: {authorize_url}");
        Self { child, said, issuer, authorize_url }
    }

    async fn line(said: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> serde_json::Value {
        let line = said.next_line().await.expect("read").expect("the RP said a line (see its stderr)");
        serde_json::from_str(&line).expect("json")
    }

    /// Gives the RP the URL the browser came back to; returns its report.
    pub(crate) async fn back(mut self, url: &str) -> serde_json::Value {
        let mut stdin = self.child.stdin.take().expect("stdin");
        stdin.write_all(format!("{url}\n").as_bytes()).await.expect("to the RP");
        Self::line(&mut self.said).await
    }

    /// The whole sign-in as alice, the browser's part through the simulator's consent page and
    /// the relay; returns the RP's report, which must be a success with checked claims.
    pub(crate) async fn sign_in(self, app: &crate::helpers::TestApp) -> serde_json::Value {
        let issuer = self.issuer.clone();
        let started = app.http.get(&self.authorize_url).send().await.expect("authorize");
        let back = through_wechat(app, &started, "alice").await;
        let done = self.back(&back).await;
        assert!(done.get("error").is_none(), "the RP refused: {done}");
        let claims = &done["claims"];
        assert_eq!((claims["iss"].as_str(), claims["aud"].as_str()), (Some(issuer.as_str()), Some(GRAFANA)));
        assert!(claims["nonce"].as_str().is_some_and(|n| !n.is_empty()), "the RP sent a nonce: {done}");
        assert_eq!(done["userinfo"]["sub"], claims["sub"]);
        assert!(done["userinfo"]["name"].as_str().is_some_and(|n| !n.is_empty()), "{done}");
        done
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_client_signs_in_with_pkce_and_checks_the_id_token() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/oidc-node");
    assert!(
        dir.join("node_modules/openid-client").is_dir(),
        "examples/oidc-node has no node_modules: run ./scripts/setup (npm ci there)"
    );
    let app = provider_on_loopback().await;
    Rp::start(&app, "node", &["rp.js"], &dir).await.sign_in(&app).await;
}

/// The Python RP (Authlib with joserfc, `examples/oidc-python/rp.py`, pinned by its
/// requirements.txt, installed by `./scripts/setup` into the Python client venv, or
/// `WXAUTH_PYTHON`): the same sign-in; and an authorization response that is not its own (a
/// forged code and state) is refused before any token request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authlib_signs_in_with_pkce_and_checks_the_id_token() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/oidc-python");
    let python = python();
    let app = provider_on_loopback().await;
    Rp::start(&app, &python, &["rp.py"], &dir).await.sign_in(&app).await;

    let rp = Rp::start(&app, &python, &["rp.py"], &dir).await;
    let forged = format!("{GRAFANA_REDIRECT}?code=forged&state=forged&iss={}", rp.issuer);
    let refused = rp.back(&forged).await;
    let error = refused["error"].as_str().unwrap_or_else(|| panic!("a forged response accepted: {refused}"));
    assert!(error.starts_with("MismatchingStateException"), "{error}");
}

/// A provider with an EC key whose `grafana` is registered for ES256 ID tokens.
async fn es256_provider_on_loopback() -> crate::helpers::TestApp {
    let keys = format!("{}\n{}", current_key(), ec_key("", "e1", "current"));
    provider_on_loopback_with(&es256_grafana_config(&keys)).await
}

/// An RP's report of a sign-in whose ID token must have been ES256 under the EC key.
fn assert_es256(done: &serde_json::Value) {
    assert_eq!((done["header"]["alg"].as_str(), done["header"]["kid"].as_str()), (Some("ES256"), Some("e1")), "{done}");
}

/// openid-client with the client's registration `id_token_signed_response_alg: 'ES256'` signs
/// in with an ES256 ID token (its signature checked from the JWKS's EC key); registered so, it
/// refuses an RS256 one (the registration is what it holds the token to).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_client_signs_in_with_an_es256_client() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/oidc-node");
    assert!(dir.join("node_modules/openid-client").is_dir(), "run ./scripts/setup (npm ci in examples/oidc-node)");
    let app = es256_provider_on_loopback().await;
    let done = Rp::start_with(&app, "node", &["rp.js"], &dir, &["ES256"]).await.sign_in(&app).await;
    assert_es256(&done);

    let rs256 = provider_on_loopback().await;
    let rp = Rp::start_with(&rs256, "node", &["rp.js"], &dir, &["ES256"]).await;
    let started = rs256.http.get(&rp.authorize_url).send().await.expect("authorize");
    let back = through_wechat(&rs256, &started, "alice").await;
    let refused = rp.back(&back).await;
    let error = refused["error"].as_str().unwrap_or_else(|| panic!("an RS256 ID token accepted: {refused}"));
    assert!(error.contains("alg"), "{error}");
}

/// Authlib (joserfc) signs in with an ES256 client: the key picked from the JWKS by the
/// header's `kid`, the algorithm held to the registration's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authlib_signs_in_with_an_es256_client() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/oidc-python");
    let app = es256_provider_on_loopback().await;
    let done = Rp::start_with(&app, &python(), &["rp.py"], &dir, &["ES256"]).await.sign_in(&app).await;
    assert_es256(&done);
}

/// The Python of the client env (`./scripts/setup`), or `WXAUTH_PYTHON`.
pub(crate) fn python() -> String {
    let venv = Path::new(&std::env::var("HOME").unwrap_or_default()).join(".cache/wxauth/py-client-venv/bin/python");
    std::env::var("WXAUTH_PYTHON").unwrap_or_else(|_| {
        assert!(
            venv.exists(),
            "no Python client env at {} (run ./scripts/setup; or set WXAUTH_PYTHON)",
            venv.display()
        );
        venv.display().to_string()
    })
}

/// The dev mode's demo page is a relying party too ("Sign in through OIDC", client `demo-oidc`):
/// from its link through the provider and WeChat's consent page back to its page, which shows
/// the checked ID token and userinfo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_modes_demo_page_signs_in_through_oidc() {
    demo_page_signs_in("login-oidc", "demo-oidc", "RS256").await;
}

/// The same with its ES256 link (client `demo-oidc-es256`, the dev EC key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_modes_demo_page_signs_in_through_oidc_with_es256() {
    demo_page_signs_in("login-oidc-es256", "demo-oidc-es256", "ES256").await;
}

/// The demo page's sign-in from its link of id `link`, as `client`, whose ID token is `alg`.
async fn demo_page_signs_in(link: &str, client: &str, alg: &str) {
    let public = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut config = SimConfig::demo();
    for app in &mut config.apps {
        app.callback_domain = public.to_string();
    }
    let (sim, sim_addr) = Simulator::spawn_local(config).await.expect("simulator");
    let demo_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind demo");
    let demo = demo_listener.local_addr().expect("demo addr");
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let addrs = wxauth::dev::DevAddrs { grpc: any, public, admin: any, sim: sim_addr, demo };
    let app = spawn_settings(sim, sim_addr, None, wxauth::dev::settings_at(&addrs).expect("dev settings")).await;
    let issuer = format!("http://{public}");
    tokio::spawn(wxauth::demo::serve_with_oidc(demo_listener, app.grpc_addr, issuer, std::future::pending()));

    let home = app.http.get(format!("http://{demo}/")).send().await.expect("demo").text().await.expect("page");
    let (_, from_link) = home.split_once(&format!("id=\"{link}\" href=\"")).expect("the demo page links to it");
    let path = from_link.split('"').next().expect("href");
    let login = app.http.get(format!("http://{demo}{path}")).send().await.expect("demo login");
    let cookie = login.headers()["set-cookie"].to_str().expect("ascii").split(';').next().expect("pair").to_owned();
    let started = app.http.get(crate::oidc::location(&login)).send().await.expect("authorize");
    let back = through_wechat(&app, &started, "alice").await;
    assert!(back.starts_with(&format!("http://{demo}/oidc/back?code=")), "{back}");
    let shown = app.http.get(&back).header("cookie", cookie).send().await.expect("demo back");

    assert_eq!(shown.status(), 200);
    let page = shown.text().await.expect("page");
    assert!(page.contains("Signed in through OIDC"), "{page}");
    assert!(page.contains(&format!("&quot;aud&quot;: &quot;{client}&quot;")), "{page}");
    assert!(page.contains(&format!("ID token ({alg} signature checked)")), "{page}");
}
