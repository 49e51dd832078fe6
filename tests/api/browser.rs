//! The dev mode walked end to end in headless Chromium, as a developer does it by hand: the
//! demo product page → the WeChat consent page (simulator) → Allow or Deny → the relay → back
//! on the demo page, which has exchanged the code over gRPC and shows the profile.
//!
//! Each test runs the dev-mode settings (`wxauth::dev::settings_at`) with every listener on
//! a free port: the public listener's port is picked first, because the callback URL and the
//! simulator's callback domain must name it before anything starts (a lost race for that
//! port is retried). A chromedriver is spawned on a free port with a fresh profile. Debian's
//! `chromium` and `chromium-driver` must be installed (`scripts/setup`); without them the
//! tests fail and say so. Override the binaries with `CHROMEDRIVER` and `CHROME_BIN`.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::free_port;
use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt as _;
use wxauth::dev::DevAddrs;
use wxauth::sim::{Endpoint, SimConfig, Simulator};
use wxauth::startup::{Application, BuildError};

pub(crate) const WAIT: Duration = Duration::from_secs(15);

/// wxauth (dev-mode settings), the simulator and the demo page, all on free loopback ports.
struct DevMode {
    sim: Simulator,
    /// The simulator's address (its JS-SDK stand-in and `/sim/jssdk/verify`).
    sim_addr: SocketAddr,
    /// The service's clock (the memory store expires flows by it).
    clock: wxauth::clock::Clock,
    demo: SocketAddr,
    /// wxauth's gRPC address (the `demo` client's key is `DEV_CLIENT_KEY`).
    grpc: SocketAddr,
    /// wxauth's public listener (the relay), where an attacker sends callbacks too.
    public: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl DevMode {
    /// Starts everything: the simulator, wxauth in dev mode on free ports, the demo page.
    async fn start() -> Self {
        for _ in 0..10 {
            let public = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let mut config = SimConfig::demo();
            for app in &mut config.apps {
                app.callback_domain = public.to_string();
            }
            let (sim, sim_addr) = Simulator::spawn_local(config).await.expect("simulator");
            let demo_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind demo");
            let demo = demo_listener.local_addr().expect("demo addr");
            let any = SocketAddr::from(([127, 0, 0, 1], 0));
            let addrs = DevAddrs { grpc: any, public, admin: any, sim: sim_addr, demo };
            let settings = wxauth::dev::settings_at(&addrs).expect("dev settings");
            let clock = wxauth::clock::Clock::system();
            let app = match Application::build_with_clock(settings, clock.clone()).await {
                Ok(app) => app,
                Err(BuildError::Bind { .. }) => continue, // the picked public port was taken meanwhile
                Err(e) => panic!("wxauth start-up: {e}"),
            };
            let grpc = app.grpc_addr();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(app.run_until(async {
                let _ = stopped.await;
            }));
            tokio::spawn(wxauth::demo::serve_beside(demo_listener, grpc, sim_addr, std::future::pending()));
            return Self { sim, sim_addr, clock, demo, grpc, public, _stop: stop };
        }
        panic!("no free port for the public listener after 10 tries");
    }

    fn home(&self) -> String {
        format!("http://{}/", self.demo)
    }
}

/// A chromedriver process, its headless Chromium session, and the profile directory.
pub(crate) struct Browser {
    client: Client,
    driver: Child,
    profile: PathBuf,
}

impl Browser {
    pub(crate) async fn start() -> Self {
        let chromium = chromium_binary();
        let driver_bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let profile = std::env::temp_dir().join(format!("wxauth-e2e-{}-{}", std::process::id(), wxauth::random_id(8)));
        for _ in 0..5 {
            let port = free_port();
            let mut driver = Command::new(&driver_bin)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run `{driver_bin}` ({e}). The browser test needs Debian's chromium and \
                         chromium-driver: run scripts/setup, or `apt-get install chromium chromium-driver`"
                    )
                });
            let url = format!("http://127.0.0.1:{port}");
            if !driver_ready(&mut driver, &url).await {
                let _ = driver.kill();
                let _ = driver.wait();
                continue;
            }
            let capabilities = serde_json::json!({
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--no-first-run", "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--no-proxy-server", "--window-size=900,760",
                        // WeChat's in-app browser: official-account pages open nowhere else,
                        // and the demo page picks its app by it.
                        format!("--user-agent={}", wxauth::sim::WECHAT_BROWSER_UA),
                        format!("--user-data-dir={}", profile.display()),
                    ],
                },
            });
            let serde_json::Value::Object(capabilities) = capabilities else { unreachable!("an object") };
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            let client = ClientBuilder::new(connector).capabilities(capabilities).connect(&url).await;
            match client {
                Ok(client) => return Self { client, driver, profile },
                Err(e) => {
                    let _ = driver.kill();
                    let _ = driver.wait();
                    panic!("chromedriver could not start Chromium ({chromium}): {e}");
                }
            }
        }
        panic!("chromedriver did not come up on a free port after 5 tries");
    }

    /// Runs `scenario` with the browser, then closes the browser whatever happened (so no
    /// Chromium outlives a failed test) and passes a failure on.
    pub(crate) async fn run<F: AsyncFnOnce(&Client)>(self, scenario: F) {
        let outcome = AssertUnwindSafe(scenario(&self.client)).catch_unwind().await;
        let Browser { client, mut driver, profile } = self;
        let _ = client.close().await;
        let _ = driver.kill();
        let _ = driver.wait();
        let _ = std::fs::remove_dir_all(profile);
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }
}

fn chromium_binary() -> String {
    if let Ok(bin) = std::env::var("CHROME_BIN") {
        return bin;
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(str::to_owned)
        .unwrap_or_else(|| {
            panic!(
                "no Chromium found (looked for /usr/bin/chromium, chromium-browser, google-chrome; set CHROME_BIN). \
                 The browser test needs Debian's chromium and chromium-driver: run scripts/setup"
            )
        })
}

async fn driver_ready(driver: &mut Child, url: &str) -> bool {
    let http = wxauth::http_client().build().expect("http");
    for _ in 0..200 {
        if let Ok(Some(_)) = driver.try_wait() {
            return false; // exited: most likely the port was taken
        }
        if http.get(format!("{url}/status")).send().await.is_ok_and(|r| r.status().is_success()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Waits for an element on the page the browser is on (or about to land on).
pub(crate) async fn wait_for(client: &Client, css: &str) -> fantoccini::elements::Element {
    match client.wait().at_most(WAIT).for_element(Locator::Css(css)).await {
        Ok(element) => element,
        Err(e) => {
            let url = client.current_url().await.map(String::from).unwrap_or_default();
            let page = client.source().await.unwrap_or_default();
            panic!("no `{css}` within {WAIT:?} ({e}); on {url}:\n{page}")
        }
    }
}

pub(crate) async fn click(client: &Client, css: &str) {
    wait_for(client, css).await.click().await.unwrap_or_else(|e| panic!("click {css}: {e}"));
}

pub(crate) async fn text(client: &Client, css: &str) -> String {
    wait_for(client, css).await.text().await.unwrap_or_else(|e| panic!("text of {css}: {e}"))
}

/// From the demo page to WeChat's consent page with a phone login.
async fn start_mobile_login(client: &Client, dev: &DevMode) {
    client.goto(&dev.home()).await.expect("open the demo page");
    click(client, "#login-mobile").await;
    wait_for(client, "#allow").await;
}

/// Picks `user` on the consent page and allows.
pub(crate) async fn allow_as(client: &Client, user: &str) {
    click(client, &format!("input[name=user][value={user}]")).await;
    click(client, "#allow").await;
}

/// The page holds no trace of a used code (WeChat's 40163 as wxauth would name it).
async fn assert_no_code_used(client: &Client) {
    let page = client.source().await.expect("page source");
    assert!(!page.contains("40163") && !page.contains("CODE_USED"), "a used code surfaced:\n{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_brings_the_user_back_signed_in_and_a_reload_keeps_them_signed_in() {
    let dev = DevMode::start().await;
    Browser::start()
        .await
        .run(async |client| {
            start_mobile_login(client, &dev).await;
            allow_as(client, "bob").await;

            assert_eq!(text(client, "#nickname").await, "Bob");
            let openid = dev.sim.openid(crate::helpers::MP_APPID, "bob").expect("bob's openid");
            assert_eq!(text(client, "#openid").await, openid);
            assert_eq!(text(client, "#unionid").await, dev.sim.unionid("bob"));
            assert_eq!(text(client, "#nickname-again").await, "Bob", "GetUserInfo from the profile cache");
            let page = client.source().await.expect("page source");
            assert!(
                !page.contains("id=\"sex\"") && !page.contains("id=\"place"),
                "no sex or region: WeChat gives none"
            );
            let landed = client.current_url().await.expect("url");
            assert_eq!(landed.path(), "/callback");
            assert_eq!(dev.sim.calls(Endpoint::AccessToken), 1);

            // The product page holds the code in its URL; a reload exchanges it again, and wxauth
            // answers from its idempotency record without asking WeChat.
            client.refresh().await.expect("reload");
            assert_eq!(text(client, "#nickname").await, "Bob");
            assert_eq!(client.current_url().await.expect("url"), landed);
            assert_eq!(dev.sim.calls(Endpoint::AccessToken), 1, "the reload did not reach WeChat");
            assert_no_code_used(client).await;
            assert_eq!(text(client, "#also").await, "no other app yet");

            // Bob opens the demo mini program too: one open-platform account, one unionid, and
            // the page finds that account by it.
            let js_code = dev.sim.js_code("wxd0000000000000d4", "bob").expect("js_code");
            let request = wxauth::proto::SignInMiniProgramRequest { app: "demo-mini".into(), js_code };
            let channel = tonic::transport::Channel::from_shared(format!("http://{}", dev.grpc)).expect("uri");
            let mut grpc = wxauth::proto::we_chat_o_auth_service_client::WeChatOAuthServiceClient::new(
                channel.connect().await.expect("connect"),
            );
            let mini = grpc
                .sign_in_mini_program(crate::helpers::authed(wxauth::config::DEV_CLIENT_KEY, request))
                .await
                .expect("mini sign-in");
            assert_eq!(mini.into_inner().unionid, dev.sim.unionid("bob"));
            client.refresh().await.expect("reload");
            assert_eq!(text(client, "#also").await, "demo-mini");

            save_screenshot(client).await;
        })
        .await;
}

/// Finding 3 of issue 18: whoever holds a flow id, without the victim's browser, could read the
/// product's state, use up the flow's callbacks, or plant his own code (login CSRF). The demo
/// sends the browser through the flow's start URL, so the flow relays only to that browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attacker_with_the_flow_id_is_refused_and_the_victim_still_signs_in() {
    let dev = DevMode::start().await;
    Browser::start()
        .await
        .run(async |client| {
            // Arrange: the victim's browser is on WeChat's consent page; its URL shows the
            // flow's browser-bound id (the flow id and more), which the attacker has learnt.
            start_mobile_login(client, &dev).await;
            let consent = client.current_url().await.expect("url");
            let bound = consent.query_pairs().find(|(k, _)| k == "state").map(|(_, v)| v.into_owned()).expect("state");
            assert_eq!(bound.len(), 76, "a browser-bound id");
            let flow_id = bound[..54].to_owned();
            let attacker_code = dev.sim.authorize(crate::helpers::MP_APPID, "bob", "snsapi_userinfo").expect("code");
            let http = wxauth::http_client().build().expect("http");
            // Act: read the state, use the budget, plant his code; with either id.
            for query in [
                format!("state={bound}"),
                format!("state={bound}"),
                format!("state={bound}"),
                format!("state={flow_id}"),
                format!("code={attacker_code}&state={bound}"),
                format!("code={attacker_code}&state={flow_id}"),
            ] {
                let response = http.get(format!("http://{}/wechat/callback?{query}", dev.public)).send().await;
                let response = response.expect("relay reachable");
                // Assert: the refusal page, never a redirect.
                assert_eq!(response.status(), 400, "{query}");
                assert!(response.headers().get("location").is_none(), "{query}");
            }
            // The victim allows and signs in as herself.
            allow_as(client, "alice").await;
            assert_eq!(text(client, "#nickname").await, "Alice 爱丽丝");
            let openid = dev.sim.openid(crate::helpers::MP_APPID, "alice").expect("alice's openid");
            assert_eq!(text(client, "#openid").await, openid);
            assert_eq!(dev.sim.calls(Endpoint::AccessToken), 1, "only the victim's code was exchanged");
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pc_qr_login_signs_in_through_the_website_app() {
    let dev = DevMode::start().await;
    Browser::start()
        .await
        .run(async |client| {
            client.goto(&dev.home()).await.expect("open the demo page");
            click(client, "#login-pc").await;
            assert_eq!(client.current_url().await.expect("url").path(), "/connect/qrconnect");
            allow_as(client, "alice").await;
            assert_eq!(text(client, "#nickname").await, "Alice 爱丽丝");
            assert_eq!(text(client, "#app").await, "demo-web");
        })
        .await;
}

/// "QR on this page" (issue 12): the demo page shows the website app's QR code with
/// `wxLogin.js` (the simulator's stand-in) from the `wx_login` parameters of BuildAuthorizeUrl;
/// the user scans and confirms inside the iframe; the callback lands in the whole window
/// (`self_redirect` false) or inside the iframe, from which the product's page breaks out
/// (`self_redirect` true). Either way the user ends signed in on the top page, with one
/// exchange.
async fn sign_in_through_the_embedded_qr_code(link: &str, self_redirect: &str) {
    let dev = DevMode::start().await;
    Browser::start()
        .await
        .run(async |client| {
            client.goto(&dev.home()).await.expect("open the demo page");
            click(client, link).await;
            let frame = wait_for(client, "#wx-qr iframe").await;
            let src = frame.attr("src").await.expect("src").expect("the iframe has a src");
            assert!(
                src.contains("/connect/qrconnect?appid=wxd0000000000000b2&scope=snsapi_login&redirect_uri="),
                "{src}"
            );
            assert!(src.contains(&format!("&login_type=jssdk&self_redirect={self_redirect}&")), "{src}");
            let product = client.current_url().await.expect("url");
            assert_eq!(product.path(), "/login/qr", "the QR code is on the product's own page");

            client.enter_frame(0).await.expect("into the QR code's iframe");
            wait_for(client, "#qrcode").await;
            allow_as(client, "alice").await;

            // The top window ends on the product's callback page (directly, or after the page
            // in the iframe broke out).
            let mut on_callback = false;
            for _ in 0..(WAIT.as_millis() / 50) {
                if client.current_url().await.is_ok_and(|url| url.path() == "/callback") {
                    on_callback = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(on_callback, "the whole window reached the product's callback");
            let _ = client.enter_parent_frame().await;
            assert_eq!(text(client, "#nickname").await, "Alice 爱丽丝");
            assert_eq!(text(client, "#app").await, "demo-web");
            let openid = dev.sim.openid(crate::helpers::WEB_APPID, "alice").expect("alice's openid");
            assert_eq!(text(client, "#openid").await, openid);
            assert_eq!(dev.sim.calls(Endpoint::AccessToken), 1, "one exchange, in the whole window");
            let framed = client.find_all(Locator::Css("iframe")).await.expect("find iframes");
            assert!(framed.is_empty(), "the profile is shown in the whole window, not a frame");
            assert_no_code_used(client).await;
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_qr_code_signs_in_through_the_whole_window() {
    sign_in_through_the_embedded_qr_code("#login-qr", "false").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_qr_code_with_self_redirect_breaks_out_of_its_frame_and_signs_in() {
    sign_in_through_the_embedded_qr_code("#login-qr-self", "true").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_lands_on_the_declined_page_with_a_way_to_retry() {
    let dev = DevMode::start().await;
    // The older ending, still seen in the field: a callback with `state` only.
    dev.sim.set_deny_stays(false);
    Browser::start()
        .await
        .run(async |client| {
            start_mobile_login(client, &dev).await;
            click(client, "#deny").await;
            assert!(text(client, "#declined").await.contains("You declined"));
            assert_eq!(dev.sim.calls(Endpoint::AccessToken), 0);
            click(client, "#retry").await;
            wait_for(client, "#login-mobile").await;
        })
        .await;
}

/// WeChat today (the simulator's default): Deny on an official account leaves the user on
/// WeChat's page, with no callback at all. Nothing reaches the relay or the product; the flow
/// just expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_without_a_callback_ends_on_wechats_page() {
    let dev = DevMode::start().await;
    Browser::start()
        .await
        .run(async |client| {
            start_mobile_login(client, &dev).await;
            click(client, "#deny").await;
            assert!(text(client, "#denied").await.contains("你已拒绝授权"));
            let url = client.current_url().await.expect("url");
            assert!(url.path().starts_with("/connect/oauth2/authorize"), "still on WeChat: {url}");
            assert_eq!(dev.sim.calls(Endpoint::AccessToken), 0);
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechats_double_callback_still_signs_the_user_in_without_code_used() {
    let dev = DevMode::start().await;
    dev.sim.set_double_callback(true);
    Browser::start()
        .await
        .run(async |client| {
            start_mobile_login(client, &dev).await;
            allow_as(client, "alice").await;
            assert_eq!(text(client, "#nickname").await, "Alice 爱丽丝");
            // Both callbacks went through the relay (the second in the grace window) to the
            // product, which exchanged both codes.
            assert_eq!(dev.sim.calls(Endpoint::AccessToken), 2);
            assert_no_code_used(client).await;
            client.refresh().await.expect("reload");
            assert_eq!(text(client, "#nickname").await, "Alice 爱丽丝");
            assert_no_code_used(client).await;
        })
        .await;
}

/// The flow's life is kept by the store (the memory store's monotonic clock here, Redis's
/// `PX` in production), which a test cannot move; so the grace window is made 1 ms, which has
/// surely passed by the time the user has landed on the product, and the user then goes back
/// to WeChat's consent page and allows again — the back button after a finished sign-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_past_its_grace_window_gets_the_start_again_page() {
    let dev = DevMode::start().await;
    Browser::start()
        .await
        .run(async |client| {
            start_mobile_login(client, &dev).await;
            allow_as(client, "alice").await;
            assert_eq!(text(client, "#nickname").await, "Alice 爱丽丝");

            // The grace window (60 s) passes on the service clock.
            dev.clock.advance(Duration::from_secs(61));
            client.back().await.expect("back");
            allow_as(client, "alice").await;
            // The consent page has an `h1` too: wait until the browser has left it.
            let mut at_relay = false;
            for _ in 0..(WAIT.as_millis() / 50) {
                if client.current_url().await.is_ok_and(|url| url.path() == "/wechat/callback") {
                    at_relay = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(at_relay, "the browser reached the relay");
            let title = text(client, "h1").await;
            assert!(title.contains("This sign-in link has expired"), "{title}");
            let url = client.current_url().await.expect("url");
            assert_eq!(url.path(), "/wechat/callback", "the relay answered itself, no redirect");
            assert_eq!(dev.sim.calls(Endpoint::AccessToken), 1, "the second code never reached the product");
        })
        .await;
}

/// The attack of the code-binding issue, as an attacker would run it: Bob signs in; his code
/// leaks (the URL of the page holding it: history, a Referer, an access log); in a fresh
/// browser session the attacker starts a sign-in of their own at the same product and hands it
/// Bob's code with their own, valid `state`. The product's state check passes — and wxauth
/// refuses the code, which came through Bob's flow. (Bob's own reload of the same code and flow
/// still signs him in: `allow_brings_the_user_back_signed_in_and_a_reload_keeps_them_signed_in`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaked_code_in_another_browser_session_signs_no_one_in() {
    let dev = DevMode::start().await;
    Browser::start()
        .await
        .run(async |client| {
            start_mobile_login(client, &dev).await;
            allow_as(client, "bob").await;
            assert_eq!(text(client, "#nickname").await, "Bob");
            let leaked = client.current_url().await.expect("the URL holding Bob's code");
            let code = leaked.query_pairs().find(|(k, _)| k == "code").map(|(_, v)| v.into_owned()).expect("code");

            // The attacker: a fresh session, a sign-in of their own, stopped at WeChat's page.
            client.delete_all_cookies().await.expect("fresh session");
            start_mobile_login(client, &dev).await;
            let state = client.get_named_cookie("wxauth_demo_state").await.expect("attacker's state cookie");
            let injected = format!("{}callback?app=demo-mp&code={code}&state={}", dev.home(), state.value());
            client.goto(&injected).await.expect("the product's callback with Bob's code");
            let refused = text(client, "#error").await;
            assert!(refused.contains("CODE_NOT_FROM_FLOW"), "{refused}");
            let page = client.source().await.expect("page source");
            assert!(!page.contains("Bob"), "the attacker's session shows nothing of Bob:\n{page}");
            assert_eq!(dev.sim.calls(Endpoint::AccessToken), 1, "the injected code never reached WeChat");
        })
        .await;
}

/// WeChat today does not call back when a QR login is declined (issue 20): the demo's embedded
/// QR page learns the user gave up from the flow's expire_time, and replaces the QR code with
/// "sign-in not completed" then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demos_qr_page_gives_up_at_the_flows_expiry() {
    let dev = DevMode::start().await;
    let http = wxauth::http_client().build().expect("http");
    let page = http.get(format!("{}login/qr", dev.home())).send().await.expect("demo").text().await.expect("page");
    let expire_time: i64 = page
        .split("data-expire-time=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|secs| secs.parse().ok())
        .unwrap_or_else(|| panic!("no expire time on the QR page: {page}"));
    assert!((expire_time - dev.clock.now_secs() - 600).abs() <= 5, "the flow's 10 minutes: {expire_time}");
    assert!(page.contains("id=\\\"qr-expired\\\"") && page.contains("Sign-in not completed"), "{page}");
}

/// "Sign in with WeChat" picks the app by User-Agent, as real products do: WeChat's in-app
/// browser gets the official account, any other browser the website app's QR code (an
/// official-account page would only say "请在微信客户端打开链接" there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_picks_the_app_by_user_agent() {
    let dev = DevMode::start().await;
    let location = |ua: &'static str| {
        let home = dev.home();
        async move {
            let http = wxauth::http_client().redirect(reqwest::redirect::Policy::none()).user_agent(ua).build();
            let http = http.expect("http");
            let response = http.get(format!("{home}login")).send().await.expect("demo");
            assert_eq!(response.status(), 302);
            // The demo sends the browser to the flow's start URL, which sends it to WeChat.
            let start = response.headers()["location"].to_str().expect("ascii").to_owned();
            assert!(start.contains("/wechat/callback?start="), "{start}");
            let response = http.get(&start).send().await.expect("start");
            assert_eq!(response.status(), 302);
            response.headers()["location"].to_str().expect("ascii").to_owned()
        }
    };
    let inside = location(wxauth::sim::WECHAT_BROWSER_UA).await;
    assert!(inside.contains("/connect/oauth2/authorize?appid="), "{inside}");
    let desktop = location("Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0 Safari/537.36").await;
    assert!(desktop.contains("/connect/qrconnect?appid="), "{desktop}");
    let outside = wxauth::http_client()
        .build()
        .expect("http")
        .get(&inside)
        .send()
        .await
        .expect("sim")
        .text()
        .await
        .expect("page");
    assert!(outside.contains("请在微信客户端打开链接") && !outside.contains("id=\"allow\""), "{outside}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_whose_state_is_not_the_browsers_is_refused() {
    let dev = DevMode::start().await;
    let http = wxauth::http_client().build().expect("http");
    let forged = format!("http://{}/callback?app=demo-mp&code=stolen&state=Forged1", dev.demo);
    let response = http.get(&forged).header("cookie", "wxauth_demo_state=Mine1").send().await.expect("demo");
    assert_eq!(response.status(), 400);
    assert!(response.text().await.expect("body").contains("not started here"));
    let response = http.get(&forged).send().await.expect("demo, no cookie");
    assert_eq!(response.status(), 400);
    assert_eq!(dev.sim.calls(Endpoint::AccessToken), 0, "no exchange was attempted");
}

/// Saves the page as the test's artifact, `target/e2e/logged-in.png`.
async fn save_screenshot(client: &Client) {
    let png = client.screenshot().await.expect("screenshot");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("e2e");
    std::fs::create_dir_all(&dir).expect("target/e2e");
    std::fs::write(dir.join("logged-in.png"), png).expect("write the screenshot");
}

/// The demo's H5 page runs `wx.config` with wxauth's signature for its own URL: the simulator's
/// stand-in JS-SDK checks it against the ticket the simulator issued and calls `wx.ready`. The
/// same values with another signature, another page URL or another timestamp are refused
/// (`config:invalid signature`, what `wx.error` gets), so the page's "ready" is the check's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demos_h5_page_runs_wx_config_with_wxauths_signature() {
    let dev = DevMode::start().await;
    let page_url = format!("{}jssdk", dev.home());
    let home = dev.home();
    let verify = format!("http://{}/sim/jssdk/verify", dev.sim_addr);
    Browser::start()
        .await
        .run(async |client| {
            client.goto(&home).await.expect("open the demo page");
            click(client, "#jssdk").await;
            let mut shown = text(client, "#jssdk-status").await;
            for _ in 0..50 {
                if shown != "checking…" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                shown = text(client, "#jssdk-status").await;
            }
            assert_eq!(shown, "ready", "wx.ready, not wx.error");
            let page = client.source().await.expect("page source");
            let value = |name: &str| {
                let rest = page.split(&format!("{name}: ")).nth(1).unwrap_or_else(|| panic!("no {name}: {page}"));
                rest.split([',', '}']).next().unwrap_or_default().trim().trim_matches('"').to_owned()
            };
            let (app_id, timestamp, nonce, signature) =
                (value("appId"), value("timestamp"), value("nonceStr"), value("signature"));
            let http = wxauth::http_client().build().expect("http");
            let ask = async |signature: &str, url: &str, timestamp: &str| {
                let query = [
                    ("appId", app_id.as_str()),
                    ("timestamp", timestamp),
                    ("nonceStr", nonce.as_str()),
                    ("signature", signature),
                    ("url", url),
                ];
                let answer = http.get(&verify).query(&query).send().await.expect("verify");
                let body: serde_json::Value = answer.json().await.expect("json");
                body["errMsg"].as_str().unwrap_or_default().to_owned()
            };
            assert_eq!(ask(&signature, &page_url, &timestamp).await, "config:ok");
            let mut other = signature.clone().into_bytes();
            other[0] = if other[0] == b'0' { b'1' } else { b'0' };
            let other = String::from_utf8(other).expect("hex");
            assert_eq!(ask(&other, &page_url, &timestamp).await, "config:invalid signature");
            assert_eq!(ask(&signature, &format!("{page_url}?x=1"), &timestamp).await, "config:invalid signature");
            assert_eq!(ask(&signature, &page_url, "1414587457").await, "config:invalid signature");
        })
        .await;
}
