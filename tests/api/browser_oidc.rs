//! Issue 22's browser test: headless Chromium signs in to a relying party's web page through
//! wxauth's OpenID Provider, the consent page of WeChat (the simulator) and the relay. The
//! relying party is `examples/oidc-node/serve.js`, a web app whose every check is openid-client's
//! (an OpenID Certified RP library, pinned by the example's `package-lock.json`, installed by
//! `./scripts/setup`): discovery, PKCE, state, nonce, the ID token's signature, issuer,
//! audience and expiry, then userinfo. The dev mode's own demo page ("Sign in through OIDC",
//! src/demo_oidc.rs) is walked the same way.
//!
//! The provider runs the dev-mode settings (`wxauth::dev::settings_at`) and its client
//! `demo-oidc`, whose redirect URI is the demo page's address: the relying party takes that
//! address (a free port it picked itself) and serves `/oidc/back` there. The browser and its
//! waits are `browser.rs`'s.

use std::net::SocketAddr;

use fantoccini::Client;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use wxauth::dev::{DEV_OIDC_CLIENT_ID, DEV_OIDC_CLIENT_SECRET, DevAddrs};
use wxauth::sim::{Endpoint, SimConfig, Simulator};
use wxauth::startup::{Application, BuildError};

use crate::browser::{Browser, allow_as, click, text, wait_for};
use crate::helpers::{MP_APPID, free_port};

/// wxauth in dev mode, the simulator, and what the test put beside them (at the demo address).
struct Provider {
    sim: Simulator,
    /// The issuer, `http://` and the public listener's address.
    issuer: String,
    grpc: SocketAddr,
    admin: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Provider {
    /// Starts the simulator and wxauth whose demo address is the one `beside` answers for the
    /// issuer it is given. The public port is picked first (the callback URL and the
    /// simulator's callback domain name it); a lost race for it is retried with a new `beside`.
    async fn start<T>(mut beside: impl AsyncFnMut(&str) -> (SocketAddr, T)) -> (Self, T) {
        for _ in 0..10 {
            let public = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let mut config = SimConfig::demo();
            for app in &mut config.apps {
                app.callback_domain = public.to_string();
            }
            let (sim, sim_addr) = Simulator::spawn_local(config).await.expect("simulator");
            let issuer = format!("http://{public}");
            let (demo, kept) = beside(&issuer).await;
            let any = SocketAddr::from(([127, 0, 0, 1], 0));
            let addrs = DevAddrs { grpc: any, public, admin: any, sim: sim_addr, demo };
            let settings = wxauth::dev::settings_at(&addrs).expect("dev settings");
            let app = match Application::build(settings).await {
                Ok(app) => app,
                Err(BuildError::Bind { .. }) => continue, // the picked public port was taken meanwhile
                Err(e) => panic!("wxauth start-up: {e}"),
            };
            let (grpc, admin) = (app.grpc_addr(), app.admin_addr());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(app.run_until(async {
                let _ = stopped.await;
            }));
            return (Self { sim, issuer, grpc, admin, _stop: stop }, kept);
        }
        panic!("no free port for the public listener after 10 tries");
    }

    /// How many token requests the provider answered with `outcome` (its metrics).
    async fn token_answers(&self, outcome: &str) -> u64 {
        let http = wxauth::http_client().build().expect("http");
        let metrics = http.get(format!("http://{}/metrics", self.admin)).send().await.expect("metrics");
        let metrics = metrics.text().await.expect("metrics text");
        let line = metrics.lines().find(|l| {
            l.starts_with("wxauth_oidc_requests_total{")
                && l.contains("endpoint=\"token\"")
                && l.contains(&format!("outcome=\"{outcome}\""))
        });
        line.and_then(|l| l.rsplit(' ').next()).map_or(0, |n| n.parse().expect("a count"))
    }
}

/// `examples/oidc-node/serve.js` as a child process on a free port, killed on drop.
struct RelyingParty {
    /// Its origin, `http://127.0.0.1:{port}/`.
    home: String,
    _child: tokio::process::Child,
}

impl RelyingParty {
    /// Starts it for the provider at `issuer`, registered as the dev mode's `demo-oidc` whose
    /// redirect URI is `http://{the demo address}/oidc/back`; returns its address too.
    async fn start(issuer: &str) -> (SocketAddr, Self) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/oidc-node");
        assert!(
            dir.join("node_modules/openid-client").is_dir(),
            "examples/oidc-node has no node_modules: run ./scripts/setup (npm ci there)"
        );
        let mut child = tokio::process::Command::new("node")
            .args(["serve.js", issuer, DEV_OIDC_CLIENT_ID, DEV_OIDC_CLIENT_SECRET, "http://127.0.0.1:0/oidc/back"])
            .current_dir(&dir)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("node runs: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        // Its first line says it accepts connections: no waiting on a clock.
        let line = BufReader::new(stdout).lines().next_line().await.expect("read");
        let said: serde_json::Value =
            serde_json::from_str(&line.expect("serve.js said where it listens (see its stderr)")).expect("json");
        let home = said["listening"].as_str().unwrap_or_else(|| panic!("{said}")).to_owned();
        let addr = home.trim_start_matches("http://").trim_end_matches('/').parse().expect("an address");
        assert_eq!(said["redirect_uri"].as_str(), Some(format!("{home}oidc/back").as_str()));
        (addr, Self { home, _child: child })
    }
}

/// From the relying party's home page to WeChat's consent page.
async fn start_sign_in(client: &Client, rp: &RelyingParty) {
    client.goto(&rp.home).await.expect("open the relying party's page");
    click(client, "#sign-in").await;
    wait_for(client, "#allow").await;
}

/// The path of the page the browser is on.
async fn path(client: &Client) -> String {
    client.current_url().await.expect("url").path().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_signs_in_to_an_openid_client_page_and_a_reloaded_callback_signs_no_one_in() {
    let (provider, rp) = Provider::start(async |issuer: &str| RelyingParty::start(issuer).await).await;
    Browser::start()
        .await
        .run(async |client| {
            start_sign_in(client, &rp).await;
            allow_as(client, "bob").await;

            // Back on the relying party, signed in with the claims openid-client checked.
            assert_eq!(text(client, "#title").await, "Signed in");
            assert_eq!(path(client).await, "/oidc/back");
            assert_eq!(text(client, "#iss").await, provider.issuer);
            assert_eq!(text(client, "#aud").await, DEV_OIDC_CLIENT_ID);
            assert_eq!(text(client, "#name").await, "Bob", "scope profile on an official account");
            let sub = text(client, "#sub").await;
            let openid = provider.sim.openid(MP_APPID, "bob").expect("bob's openid");
            assert!(!sub.is_empty() && sub != openid && sub != provider.sim.unionid("bob"), "pairwise: {sub}");
            assert!(text(client, "#userinfo").await.contains(&format!("\"sub\": \"{sub}\"")));
            assert_eq!(provider.sim.calls(Endpoint::AccessToken), 1);
            // The tokens stayed on the server; the browser holds a session id it cannot read.
            let page = client.source().await.expect("page source");
            assert!(!page.contains("eyJ") && !page.contains("access_token"), "a token on the page:\n{page}");
            let cookie = client.get_named_cookie("rp_session").await.expect("the session cookie");
            assert_eq!(cookie.http_only(), Some(true));
            assert_eq!(cookie.same_site().map(|s| s.to_string()).as_deref(), Some("Lax"));
            assert_eq!(provider.token_answers("ok").await, 1);

            // A reload sends the same code again: the provider refuses it, and the relying
            // party shows the library's error.
            let landed = client.current_url().await.expect("url");
            client.refresh().await.expect("reload");
            assert_eq!(text(client, "#title").await, "Sign-in failed");
            assert_eq!(client.current_url().await.expect("url"), landed);
            assert_eq!(text(client, "#error-code").await, "invalid_grant");
            assert!(text(client, "#error").await.starts_with("ResponseBodyError"));
            assert_eq!(provider.token_answers("invalid_grant").await, 1, "the provider refused the second use");
            assert_eq!(provider.token_answers("ok").await, 1);
            assert_eq!(provider.sim.calls(Endpoint::AccessToken), 1, "the reload never reached WeChat");

            // The second use revoked the access token the first one issued.
            client.goto(&format!("{}userinfo", rp.home)).await.expect("userinfo again");
            assert_eq!(text(client, "#error-code").await, "invalid_token");
        })
        .await;
}

/// Deny on WeChat's consent page, with WeChat's older ending (a callback with `state` only):
/// the provider answers the relying party `access_denied` (src/oidc/authorize.rs), which
/// openid-client raises and the page shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_on_the_consent_page_lands_on_the_relying_party_with_access_denied() {
    let (provider, rp) = Provider::start(async |issuer: &str| RelyingParty::start(issuer).await).await;
    provider.sim.set_deny_stays(false);
    Browser::start()
        .await
        .run(async |client| {
            start_sign_in(client, &rp).await;
            click(client, "#deny").await;
            assert_eq!(text(client, "#error-code").await, "access_denied");
            assert_eq!(path(client).await, "/oidc/back");
            assert!(text(client, "#error").await.starts_with("AuthorizationResponseError"));
            assert!(text(client, "#error-description").await.contains("did not allow"));
            assert_eq!(provider.sim.calls(Endpoint::AccessToken), 0);
            assert_eq!(provider.token_answers("ok").await, 0, "no token request");
        })
        .await;
}

/// The dev mode's demo page, "Sign in through OIDC" (src/demo_oidc.rs), clicked through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_pages_sign_in_through_oidc_works_in_a_browser() {
    let bind = async |_: &str| {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind demo");
        (listener.local_addr().expect("demo addr"), listener)
    };
    let (provider, listener) = Provider::start(bind).await;
    let home = format!("http://{}/", listener.local_addr().expect("demo addr"));
    let issuer = provider.issuer.clone();
    tokio::spawn(wxauth::demo::serve_with_oidc(listener, provider.grpc, issuer, std::future::pending()));
    Browser::start()
        .await
        .run(async |client| {
            client.goto(&home).await.expect("open the demo page");
            click(client, "#login-oidc").await;
            allow_as(client, "alice").await;
            assert_eq!(text(client, "#title").await, "Signed in through OIDC");
            assert_eq!(path(client).await, "/oidc/back");
            let shown = text(client, "#result").await;
            assert!(shown.contains(&format!("\"aud\": \"{DEV_OIDC_CLIENT_ID}\"")), "{shown}");
            assert!(shown.contains("\"name\": \"Alice 爱丽丝\""), "{shown}");
            assert_eq!(provider.token_answers("ok").await, 1);
        })
        .await;
}
