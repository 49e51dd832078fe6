//! Test harness: a private `redis-server` per test (spawned on a free port), the WeChat
//! simulator, and wxauth itself on port 0, reached through a real tonic client and real HTTP.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tonic::Request;
use tonic::transport::Channel;
use wxauth::clock::Clock;
use wxauth::config::Settings;
use wxauth::proto::we_chat_o_auth_service_client::WeChatOAuthServiceClient;
use wxauth::proto::{self, ExchangeCodeRequest, ExchangeCodeResponse};
use wxauth::sim::{SimConfig, Simulator};
use wxauth::startup::Application;
use wxauth::store::Store;
use wxauth::tokens::Tokens;

/// The callback domain WeChat (the simulator) knows; the Ingress in front of the relay.
pub const CALLBACK_HOST: &str = "auth.wxauth.test";
/// appids of the simulator's demo apps.
pub const MP_APPID: &str = "wxd0000000000000a1";
pub const WEB_APPID: &str = "wxd0000000000000b2";
pub const APP_APPID: &str = "wxd0000000000000c3";
pub const MINI_APPID: &str = "wxd0000000000000d4";
/// Client keys of the test config.
pub const PASSPORT_KEY: &str = "passport-test-key";
pub const TRADE_KEY: &str = "trade-test-key";

/// A BuildAuthorizeUrl request of app `mp` for the `passport` client's return URL.
pub fn flow_request() -> proto::BuildAuthorizeUrlRequest {
    proto::BuildAuthorizeUrlRequest {
        app: "mp".into(),
        return_url: "https://passport.example.com/login/".into(),
        scope: proto::Scope::SnsapiBase as i32,
        ..Default::default()
    }
}

/// A code as a product's return URL receives it, with the flow id the product kept.
#[derive(Clone, Debug)]
pub struct Relayed {
    pub flow_id: String,
    pub code: String,
}

/// Which store backend a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Redis,
    Memory,
}

/// A `redis-server` owned by one test, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Child,
}

impl RedisServer {
    pub async fn start() -> Self {
        for _ in 0..20 {
            let port = free_port();
            let child = spawn_redis_server(port, &[], None);
            let mut server = RedisServer { port, child };
            if server.wait_ready().await {
                return server;
            }
            let _ = server.child.kill();
        }
        panic!("could not start redis-server");
    }

    async fn wait_ready(&mut self) -> bool {
        wait_listening(&mut self.child, self.port).await
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A raw connection, to look at what wxauth stored.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).expect("url").get_multiplexed_async_connection().await.expect("connect")
    }

    /// Stops the server (SIGKILL) and returns its port, to start it again later.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes the server (SIGSTOP): its connections stay open and nothing is answered, as
    /// with a network partition or a stalled host.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let sent = Command::new("kill").args([signal, &self.child.id().to_string()]).status().expect("kill runs");
        assert!(sent.success(), "kill {signal}");
    }

    /// Starts a server again on the same port.
    pub async fn restart(&mut self) {
        self.child = spawn_redis_server(self.port, &[], None);
        assert!(self.wait_ready().await, "redis restarted");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `redis-server` on loopback `port` that keeps nothing on disk, with `extra` arguments,
/// run in `dir` (for files it writes, like a cluster's nodes.conf) when given.
pub fn spawn_redis_server(port: u16, extra: &[&str], dir: Option<&std::path::Path>) -> Child {
    let binary = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
    let mut command = Command::new(binary);
    command.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    command
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (see README set-up)")
}

/// Waits (up to 2 s) until `child` accepts TCP on loopback `port`; false when it exited
/// (the port was taken) or never listened.
pub async fn wait_listening(child: &mut Child, port: u16) -> bool {
    for _ in 0..200 {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Polls `check` until it holds (true) or 5 s pass (false): for states another task reaches,
/// such as a call that has arrived at the simulator. Polling, never waiting for time to pass.
pub async fn eventually<F: AsyncFn() -> bool>(check: F) -> bool {
    for _ in 0..500 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// A port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// The simulator with the demo apps, calling back to the test callback domain.
pub async fn spawn_sim() -> (Simulator, SocketAddr) {
    let mut config = SimConfig::demo();
    for app in &mut config.apps {
        app.callback_domain = CALLBACK_HOST.into();
    }
    Simulator::spawn_local(config).await.expect("simulator")
}

/// Test config: apps `mp` (official account, MOBILE default), `web` (website, PC default),
/// `app` (mobile app) and `mini` (mini program), all on one open-platform account; clients
/// `passport` (every app) and `trade` (mp only, its own domain).
pub fn settings(sim: SocketAddr, store: &str, extra: &str) -> Settings {
    Settings::from_toml(&settings_toml(sim, store, extra)).expect("test settings")
}

/// The TOML [`settings`] parses, for tests that change a key of a section it already has.
pub fn settings_toml(sim: SocketAddr, store: &str, extra: &str) -> String {
    let key = |k: &str| hex::encode(wxauth::config::key_digest(k));
    format!(
        r#"
mode = "development"
[server]
grpc_addr = "127.0.0.1:0"
public_addr = "127.0.0.1:0"
admin_addr = "127.0.0.1:0"
callback_url = "https://{CALLBACK_HOST}/wechat/callback"
drain = "5s"
[store]
{store}
sealing_keys = "{sealing}"
[wechat]
open_base = "http://{sim}"
api_base = "http://{sim}"
timeout = "2s"
[apps.mp]
kind = "official_account"
appid = "{MP_APPID}"
secret = "demo-mp-secret"
default_for = "MOBILE"
[apps.web]
kind = "website"
appid = "{WEB_APPID}"
secret = "demo-web-secret"
default_for = "PC"
[apps.app]
kind = "mobile_app"
appid = "{APP_APPID}"
secret = "demo-app-secret"
[apps.mini]
kind = "mini_program"
appid = "{MINI_APPID}"
secret = "demo-mini-secret"
# No rate limits for the two test clients: most tests make calls faster than any production
# default allows. Tests of the limits add clients of their own (see `limits.rs`). `extra`
# lands in [clients.trade] until it opens a table of its own.
[clients.passport]
key_sha256 = "{passport}"
apps = ["mp", "web", "app", "mini"]
return_urls = ["https://passport.example.com/login/", "https://*.example.com/"]
rate_limits = {{ authorize = "off", exchange = "off", user = "off" }}
[clients.trade]
key_sha256 = "{trade}"
apps = ["mp"]
return_urls = ["https://trade.example.com/"]
rate_limits = {{ authorize = "off", exchange = "off", user = "off" }}
{extra}
"#,
        sealing = test_keyring(),
        passport = key(PASSPORT_KEY),
        trade = key(TRADE_KEY),
    )
}

/// A fixed sealing key for tests (id 1).
pub fn test_keyring() -> String {
    "1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into()
}

/// One running wxauth and its surroundings.
pub struct TestApp {
    pub grpc: WeChatOAuthServiceClient<Channel>,
    pub grpc_addr: SocketAddr,
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub sim: Simulator,
    pub sim_addr: SocketAddr,
    pub clock: Clock,
    pub store: Store,
    pub tokens: Arc<Tokens>,
    pub redis: Option<Arc<tokio::sync::Mutex<RedisServer>>>,
    pub http: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// wxauth on a private redis-server (or in memory) with its own simulator.
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_configured(backend, "").await
}

/// [`spawn_app`] with extra config appended.
pub async fn spawn_app_configured(backend: Backend, extra: &str) -> TestApp {
    let (sim, sim_addr) = spawn_sim().await;
    let redis = match backend {
        Backend::Redis => Some(Arc::new(tokio::sync::Mutex::new(RedisServer::start().await))),
        Backend::Memory => None,
    };
    spawn_app_with(sim, sim_addr, redis, extra).await
}

/// wxauth with a given simulator, redis and extra config (a second replica, other settings).
pub async fn spawn_app_with(
    sim: Simulator,
    sim_addr: SocketAddr,
    redis: Option<Arc<tokio::sync::Mutex<RedisServer>>>,
    extra: &str,
) -> TestApp {
    let store = match &redis {
        Some(r) => format!("kind = \"redis\"\nurl = \"{}\"", r.lock().await.url()),
        None => "kind = \"memory\"".to_owned(),
    };
    spawn_settings(sim, sim_addr, redis, settings(sim_addr, &store, extra)).await
}

/// wxauth with fully given settings.
pub async fn spawn_settings(
    sim: Simulator,
    sim_addr: SocketAddr,
    redis: Option<Arc<tokio::sync::Mutex<RedisServer>>>,
    settings: Settings,
) -> TestApp {
    let clock = Clock::system();
    let app = Application::build_with_clock(settings, clock.clone()).await.expect("build");
    let (grpc_addr, public_addr, admin_addr) = (app.grpc_addr(), app.public_addr(), app.admin_addr());
    let (store, tokens) = (app.store(), app.tokens());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    let channel = Channel::from_shared(format!("http://{grpc_addr}")).expect("uri").connect().await.expect("connect");
    // The test's "browser" is inside WeChat: official-account pages open nowhere else.
    let http = wxauth::http_client()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(wxauth::sim::WECHAT_BROWSER_UA)
        .build()
        .expect("http");
    TestApp {
        grpc: WeChatOAuthServiceClient::new(channel),
        grpc_addr,
        public_addr,
        admin_addr,
        sim,
        sim_addr,
        clock,
        store,
        tokens,
        redis,
        http,
        shutdown: Some(tx),
        server: Some(server),
    }
}

/// A request carrying a client key.
pub fn authed<T>(key: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().expect("ascii"));
    request
}

impl TestApp {
    /// A request from the `passport` client.
    pub fn req<T>(&self, message: T) -> Request<T> {
        authed(PASSPORT_KEY, message)
    }

    /// Signals shutdown and waits for the server to finish.
    pub async fn stop(&mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.server.take() {
            Some(handle) => handle.await.expect("server task"),
            None => Ok(()),
        }
    }

    /// A code for `user`, as if they consented in WeChat (not relayed: the relay never saw it).
    pub fn code(&self, appid: &str, user: &str, scope: &str) -> String {
        self.sim.authorize(appid, user, scope).expect("sim authorize")
    }

    /// What a product's return URL receives when `user` signs in to `app` (`mp` or `web`)
    /// through a flow the `passport` client started: the flow id it kept and the relayed code.
    pub async fn relayed(&self, app: &str, user: &str, scope: &str) -> Relayed {
        self.relayed_as(PASSPORT_KEY, app, user, scope).await
    }

    /// [`TestApp::relayed`] for the client with `key`.
    pub async fn relayed_as(&self, key: &str, app: &str, user: &str, scope: &str) -> Relayed {
        let flow_id = self.flow_as(key, app, scope).await;
        let appid = if app == "web" { WEB_APPID } else { MP_APPID };
        let code = self.code(appid, user, scope);
        self.relay(&flow_id, &code).await;
        Relayed { flow_id, code }
    }

    /// A new flow of `app` started by the client with `key` (its first allowed return URL).
    pub async fn flow_as(&self, key: &str, app: &str, scope: &str) -> String {
        let return_url =
            if key == TRADE_KEY { "https://trade.example.com/" } else { "https://passport.example.com/login/" };
        let scope = match scope {
            "snsapi_base" => proto::Scope::SnsapiBase,
            "snsapi_login" => proto::Scope::SnsapiLogin,
            _ => proto::Scope::SnsapiUserinfo,
        };
        let request = proto::BuildAuthorizeUrlRequest {
            app: app.into(),
            return_url: return_url.into(),
            scope: scope as i32,
            ..Default::default()
        };
        let response = self.grpc.clone().build_authorize_url(authed(key, request)).await.expect("flow");
        response.into_inner().flow_id
    }

    /// WeChat calling back with `code` for `flow_id`; the relay must send it on.
    pub async fn relay(&self, flow_id: &str, code: &str) {
        let response = self.callback(&format!("code={code}&state={flow_id}")).await;
        assert_eq!(response.status(), 302, "the relay sends the code on");
    }

    /// Logs `user` in to app `mp` with `scope` and returns the exchange result.
    pub async fn login(&self, user: &str, scope: &str) -> ExchangeCodeResponse {
        let code = self.relayed("mp", user, scope).await;
        self.exchange("mp", &code).await.expect("exchange")
    }

    /// ExchangeCode of a relayed code, as the `passport` client.
    pub async fn exchange(&self, app: &str, code: &Relayed) -> Result<ExchangeCodeResponse, tonic::Status> {
        self.exchange_as(PASSPORT_KEY, app, &code.flow_id, &code.code).await
    }

    /// ExchangeCode of any `(flow_id, code)` by the client with `key`.
    pub async fn exchange_as(
        &self,
        key: &str,
        app: &str,
        flow_id: &str,
        code: &str,
    ) -> Result<ExchangeCodeResponse, tonic::Status> {
        let request =
            ExchangeCodeRequest { app: app.into(), flow_id: flow_id.into(), code: code.into(), ..Default::default() };
        self.grpc.clone().exchange_code(authed(key, request)).await.map(tonic::Response::into_inner)
    }

    /// ExchangeMobileCode of `code` in app `app`, as the client with `key`.
    pub async fn exchange_mobile_as(
        &self,
        key: &str,
        code: &str,
    ) -> Result<proto::ExchangeMobileCodeResponse, tonic::Status> {
        let request = proto::ExchangeMobileCodeRequest { app: "app".into(), code: code.into(), ..Default::default() };
        self.grpc.clone().exchange_mobile_code(authed(key, request)).await.map(tonic::Response::into_inner)
    }

    /// A mobile-app code for `user` (the WeChat SDK's), exchanged by `passport`.
    pub async fn mobile_login(&self, user: &str) -> proto::ExchangeMobileCodeResponse {
        let code = self.code(APP_APPID, user, "snsapi_userinfo");
        self.exchange_mobile_as(PASSPORT_KEY, &code).await.expect("mobile exchange")
    }

    /// SignInMiniProgram with `js_code` in app `mini`, as the client with `key`.
    pub async fn mini_sign_in_as(
        &self,
        key: &str,
        js_code: &str,
    ) -> Result<proto::SignInMiniProgramResponse, tonic::Status> {
        let request = proto::SignInMiniProgramRequest { app: "mini".into(), js_code: js_code.into() };
        self.grpc.clone().sign_in_mini_program(authed(key, request)).await.map(tonic::Response::into_inner)
    }

    /// `user` signs in to the mini program (`wx.login()`, then SignInMiniProgram by `passport`).
    pub async fn mini_login(&self, user: &str) -> proto::SignInMiniProgramResponse {
        let js_code = self.sim.js_code(MINI_APPID, user).expect("js_code");
        self.mini_sign_in_as(PASSPORT_KEY, &js_code).await.expect("mini sign-in")
    }

    /// FindAccounts of `unionid`, as the client with `key`.
    pub async fn find_accounts_as(&self, key: &str, unionid: &str) -> Result<Vec<proto::Account>, tonic::Status> {
        let request = proto::FindAccountsRequest { unionid: unionid.into(), ..Default::default() };
        let found = self.grpc.clone().find_accounts(authed(key, request)).await?;
        Ok(found.into_inner().accounts)
    }

    /// GetUserInfo that skips the profile cache (`fresh`): every call uses the stored token and
    /// asks WeChat. `profile` goes through the cache.
    pub async fn user_info(&self, openid: &str) -> Result<proto::UserInfo, tonic::Status> {
        self.profile(openid, proto::Lang::Unspecified, true).await.map(|r| r.user_info.expect("user_info"))
    }

    /// GetUserInfo in `lang`, through the profile cache unless `fresh`.
    pub async fn profile(
        &self,
        openid: &str,
        lang: proto::Lang,
        fresh: bool,
    ) -> Result<proto::GetUserInfoResponse, tonic::Status> {
        let request = proto::GetUserInfoRequest {
            app: "mp".into(),
            openid: openid.into(),
            lang: lang as i32,
            fresh,
            ..Default::default()
        };
        self.grpc.clone().get_user_info(self.req(request)).await.map(tonic::Response::into_inner)
    }

    /// Calls the relay with a raw query string.
    pub async fn callback(&self, query: &str) -> reqwest::Response {
        self.http
            .get(format!("http://{}/wechat/callback?{query}", self.public_addr))
            .send()
            .await
            .expect("relay reachable")
    }

    /// Moves both clocks (WeChat's and the service's) forward.
    pub fn advance(&self, by: Duration) {
        self.sim.advance(by);
        self.clock.advance(by);
    }
}

/// The `ErrorInfo.reason` of a status.
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt as _;
    status.get_error_details().error_info().map(|i| i.reason.clone()).unwrap_or_default()
}

/// The `ErrorInfo.metadata[key]` of a status.
pub fn metadata(status: &tonic::Status, key: &str) -> Option<String> {
    use tonic_types::StatusExt as _;
    status.get_error_details().error_info().and_then(|i| i.metadata.get(key).cloned())
}

/// Runs a test body against both backends.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod redis_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Redis).await
                }
            )*
        }
        mod memory_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Memory).await
                }
            )*
        }
    };
}
