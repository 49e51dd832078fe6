//! Services in other languages: `examples/python/wxauth_login.py` (grpcio, stubs generated from
//! `proto/` at run time), `examples/node/wxauth_login.js` (`@grpc/grpc-js` and
//! `@grpc/proto-loader`), `examples/java/` (grpc-java, Maven) and `examples/go/` (grpc-go, `buf
//! generate`) sign a user in through wxauth (the Python one also through the mini program,
//! finding the web account by unionid), read its error details, and send a deadline and a W3C
//! `traceparent` with every call: wxauth's span of each call joins the caller's trace, as the
//! caller's span's child. Node, Java, Go, Python and PHP (the last through the JSON face,
//! `examples/php/`) run one scenario of injected failures
//! ([`signs_in_and_reacts_to_each_failure`]) and are checked alike.
//!
//! The spans are caught in process, by one subscriber for the whole test process (set once, as
//! the global default) that keeps the `rpc` spans with a remote parent: each test finds its own
//! by the ids its example sent. (A subscriber per test thread raced with the other tests: tracing
//! caches each callsite's interest process-wide, and a callsite first met on a thread with no
//! subscriber could be cached as disabled for the thread that had one, so a CI run once saw
//! none of the Node example's spans.)

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt as _;
use wxauth::sim::{Endpoint, Fault};

use crate::helpers::{Backend, MINI_APPID, MP_APPID, PASSPORT_KEY, TestApp, spawn_app};

/// The `rpc` spans the service ended with a remote parent (a caller's trace), kept in memory.
#[derive(Clone, Debug, Default)]
struct Spans(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Spans {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().expect("spans").extend(batch.into_iter().filter(|s| s.parent_span_is_remote));
        Ok(())
    }
}

/// What `main` sets up with OTLP, pointed at memory: W3C trace context taken from gRPC metadata
/// (the process-wide propagator `telemetry::init` installs) and an OpenTelemetry layer for the
/// service's `rpc` spans, installed once as the process's subscriber.
fn caught_spans() -> &'static Spans {
    static CAUGHT: OnceLock<(Spans, SdkTracerProvider)> = OnceLock::new();
    let (spans, _provider) = CAUGHT.get_or_init(|| {
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        let spans = Spans::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(spans.clone()).build();
        let layer =
            tracing_opentelemetry::layer().with_tracer(provider.tracer("polyglot")).with_filter(filter_fn(|meta| {
                meta.is_span() && meta.name() == "rpc" && meta.target().starts_with("wxauth")
            }));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("no other test sets a global subscriber");
        wxauth::telemetry::export_spans_for_tests();
        (spans, provider)
    });
    spans
}

/// Every call the example reports (`sent`: method and `traceparent`) has its wxauth span: in
/// the caller's trace, with the caller's span as its remote parent.
fn assert_spans_join_the_callers_traces(spans: &Spans, sent: &serde_json::Value) {
    let spans = spans.0.lock().expect("spans");
    let sent = sent.as_array().expect("the example reports the calls it made");
    assert!(sent.len() >= 5, "{sent:?}");
    for call in sent {
        let (method, traceparent) =
            (call["method"].as_str().expect("method"), call["traceparent"].as_str().expect("tp"));
        let [version, trace_id, parent_id, flags] = traceparent.split('-').collect::<Vec<_>>()[..] else {
            panic!("not a traceparent: {traceparent}")
        };
        assert_eq!((version, flags, trace_id.len(), parent_id.len()), ("00", "01", 32, 16), "{traceparent}");
        let name = format!("wxauth.v1.WeChatOAuthService/{method}");
        let span =
            spans.iter().find(|s| s.name == name && s.parent_span_id.to_string() == parent_id).unwrap_or_else(|| {
                let seen: Vec<_> = spans.iter().map(|s| format!("{} <- {}", s.name, s.parent_span_id)).collect();
                panic!("no {name} span with parent {parent_id}; sent {sent:?}; spans {seen:#?}")
            });
        assert_eq!(span.span_context.trace_id().to_string(), trace_id, "{name} joins the caller's trace");
        assert!(span.parent_span_is_remote, "{name}: the parent is the caller's span");
    }
}

/// The path of a tool `scripts/setup` prepares, or the override in `env`.
fn tool(env: &str, default: &Path, what: &str) -> String {
    if let Ok(path) = std::env::var(env) {
        return path;
    }
    assert!(default.exists(), "no {what} at {} (run scripts/setup; or set {env})", default.display());
    default.display().to_string()
}

/// Runs `program args` off the runtime's thread and returns its one JSON line.
async fn run_example(program: String, args: Vec<String>) -> serde_json::Value {
    let output = tokio::task::spawn_blocking(move || Command::new(&program).args(&args).output())
        .await
        .expect("join")
        .expect("the example runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the example failed: {stderr}");
    serde_json::from_slice(&output.stdout).expect("one JSON object")
}

/// The Python example: the sign-in and the reactions to each failure every gRPC example shows
/// (checked by [`signs_in_and_reacts_to_each_failure`]), then its own steps: the same person in
/// the mini program, found by unionid; the app's token refused to a client without the grant;
/// the user forgotten.
#[tokio::test(flavor = "current_thread")]
async fn a_python_service_signs_a_user_in_and_reacts_to_each_failure() {
    let venv = Path::new(&std::env::var("HOME").unwrap_or_default()).join(".cache/wxauth/py-client-venv/bin/python");
    let python = tool("WXAUTH_PYTHON", &venv, "Python client env");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python/wxauth_login.py");
    let (app, seen) = signs_in_and_reacts_to_each_failure(false, |app, outage| {
        let own = ["--sim", &format!("http://{}", app.sim_addr), "--mini-app", "mini", "--mini-appid", MINI_APPID];
        (python, [vec![script.to_owned()], failure_args(app, outage), own.map(String::from).to_vec()].concat())
    })
    .await;
    let openid = app.sim.openid(MP_APPID, "alice").expect("alice");
    assert_eq!(seen["app_token"], serde_json::json!({ "reason": "GRANT_MISSING", "grant": "app_access_token" }));
    assert_eq!(seen["mini_openid_differs"], true);
    assert_eq!(seen["mini_unionid_matches"], true, "one person, one unionid");
    assert_eq!(seen["accounts"], serde_json::json!(["mini:APP_KIND_MINI_PROGRAM", "mp:APP_KIND_OFFICIAL_ACCOUNT"]));
    assert_eq!(seen["web_account_by_unionid"], openid.as_str(), "the web account, found by unionid");
    assert_eq!(seen["forgot_a_token"], true);
    assert_eq!(seen["after_forget"], "TOKEN_NOT_FOUND");
    assert_eq!(seen["user_events"], serde_json::json!({"events": 0, "gap": false}));
    // Two sign-ins read the profile from WeChat (the one after the lost answer, and the one that
    // consented again); the example's GetUserInfo came from the cache.
    assert_eq!(app.sim.calls(Endpoint::UserInfo), 2, "GetUserInfo came from the cache");
}

/// The sign-in every gRPC example runs against WeChat failing the way the examples show how to
/// handle: the first exchange's answer lost (SIGN_IN_AGAIN: a new sign-in, not a retry), the
/// refresh token revoked (REAUTHORIZATION_REQUIRED: consent again), and a second wxauth whose
/// Redis is down (STORE_UNAVAILABLE: retried after RetryInfo's delay, then given up on).
/// `command` gives the example's program and arguments for the wxauth under test and the one
/// whose Redis is down (most take [`failure_args`]); its JSON line is checked here, the same
/// for every language, and so are its spans.
/// With `app_level`, the example also called GetAppAccessToken and SignJsSdkConfig as the
/// granted client `shop` ([`APP_LEVEL_ARGS`]), and its answers are checked.
async fn signs_in_and_reacts_to_each_failure(
    app_level: bool,
    command: impl FnOnce(&TestApp, &TestApp) -> (String, Vec<String>),
) -> (TestApp, serde_json::Value) {
    let spans = caught_spans();
    // `shop`: a product granted the app's own credentials (GetAppAccessToken, SignJsSdkConfig).
    let shop = format!(
        "[clients.shop]\nkey_sha256 = \"{}\"\napps = [\"mp\"]\nreturn_urls = [\"https://shop.example.com/\"]\n\
         grants = [\"app_access_token\", \"jssdk\"]\n",
        hex::encode(wxauth::config::key_digest("node-shop-test-key"))
    );
    let app = crate::helpers::spawn_app_configured(Backend::Redis, &shop).await;
    let outage = spawn_app(Backend::Redis).await;
    outage.redis.as_ref().expect("redis").lock().await.kill();
    app.sim.inject(Endpoint::AccessToken, Fault::AfterWork(Box::new(Fault::HttpStatus(502))), 1);
    app.sim.inject(Endpoint::RefreshToken, Fault::Errcode(40030), 1);

    let (program, args) = command(&app, &outage);
    let seen = run_example(program, args).await;

    let openid = app.sim.openid(MP_APPID, "alice").expect("alice");
    assert_eq!(seen["authorize_url_ends_with"], "#wechat_redirect");
    assert_eq!(seen["returned_to"], "https://passport.example.com/login/");
    assert_eq!(seen["state_matches"], true);
    assert_eq!(seen["start_url_on_callback_domain"], true);
    let sign_in_again =
        serde_json::json!({"code": "FAILED_PRECONDITION", "reason": "SIGN_IN_AGAIN", "action": "sign_in_again"});
    assert_eq!(seen["exchange_failed"], sign_in_again);
    assert_eq!(seen["sign_ins"], 2, "a new sign-in after the lost answer");
    assert_eq!(seen["openid"], openid.as_str());
    assert_eq!(seen["same_result_again"], true, "no 40163 for a reload");
    assert_eq!(seen["nickname"], "Alice 爱丽丝");
    assert_eq!(seen["profile_nickname"], "Alice 爱丽丝");
    assert!(seen["profile_fetch_time"].as_i64().is_some_and(|t| t > 1_700_000_000));

    let reauthorize = serde_json::json!({"code": "FAILED_PRECONDITION", "reason": "REAUTHORIZATION_REQUIRED", "action": "reauthorize"});
    assert_eq!(seen["refresh"], reauthorize);
    assert_eq!(seen["reauthorized_same_user"], true);
    assert_eq!(seen["refresh_after_reauthorization"], "ok");

    assert_eq!(seen["bad_request"]["code"], "INVALID_ARGUMENT");
    assert_eq!(seen["bad_request"]["reason"], "INVALID_ARGUMENT");
    assert_eq!(seen["bad_request"]["action"], "fix_request");
    let violations = seen["bad_request"]["field_violations"].as_object().expect("BadRequest");
    assert_eq!(violations.keys().collect::<Vec<_>>(), ["openid"], "BadRequest names the field");
    assert_eq!(seen["unknown_user"]["reason"], "TOKEN_NOT_FOUND");
    assert_eq!(seen["unknown_user"]["action"], "reauthorize");
    assert_eq!(seen["injected_code"]["reason"], "CODE_NOT_FROM_FLOW");
    assert_eq!(seen["injected_code"]["action"], "sign_in_again");

    let outage_seen = serde_json::json!({
        "code": "UNAVAILABLE", "reason": "STORE_UNAVAILABLE", "action": "retry", "retry_delay_ms": 1000, "attempts": 2
    });
    assert_eq!(seen["outage"], outage_seen);
    assert_eq!(app.sim.calls(Endpoint::AccessToken), 3, "lost, then the two sign-ins' exchanges; no retried code");

    if app_level {
        let expires_in = seen["app_access_token"]["expires_in_s"].as_i64().expect("the token's life");
        assert!((7000..=7200).contains(&expires_in), "a fresh 7200 s token: {expires_in}");
        assert_eq!(app.sim.calls(Endpoint::StableToken), 1, "one token, fetched by wxauth");
        let jssdk = &seen["jssdk"];
        assert_eq!(jssdk["url"], "https://shop.example.com/h5/share?id=7", "the fragment cut");
        assert_eq!(jssdk["js_api_list"], serde_json::json!(["updateAppMessageShareData"]));
        // The signature as the WeChat client checks it (the simulator's stand-in, with its ticket).
        let field = |name: &str| jssdk[name].as_str().map_or_else(|| jssdk[name].to_string(), str::to_owned);
        let verify = format!("http://{}/sim/jssdk/verify", app.sim_addr);
        let query =
            [("appId", "app_id"), ("timestamp", "timestamp"), ("nonceStr", "nonce_str"), ("signature", "signature")]
                .map(|(param, name)| (param, field(name)));
        let answer = app.http.get(&verify).query(&query).query(&[("url", field("url"))]).send().await.expect("verify");
        let answer: serde_json::Value = answer.json().await.expect("json");
        assert_eq!(answer["errMsg"], "config:ok", "{jssdk}");
    }
    assert_spans_join_the_callers_traces(spans, &seen["sent"]);
    (app, seen)
}

/// The arguments that make an example call the app-level RPCs as `shop`.
const APP_LEVEL_ARGS: [&str; 4] =
    ["--app-key", "node-shop-test-key", "--page-url", "https://shop.example.com/h5/share?id=7#top"];

/// The arguments every gRPC example takes (the Node example's names) for `app`, with `outage`
/// as the wxauth whose Redis is down.
fn failure_args(app: &TestApp, outage: &TestApp) -> Vec<String> {
    let args = [
        "--grpc",
        &app.grpc_addr.to_string(),
        "--relay",
        &format!("http://{}", app.public_addr),
        "--app",
        "mp",
        "--key",
        PASSPORT_KEY,
        "--return-url",
        "https://passport.example.com/login/",
        "--outage-grpc",
        &outage.grpc_addr.to_string(),
    ];
    args.map(String::from).to_vec()
}

/// Runs `program args` in `dir` (a build step of an example) and fails the test with its output.
async fn build_step(dir: &Path, program: &str, args: &[&str]) {
    let (dir, program_name) = (dir.to_owned(), program.to_owned());
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let output =
        tokio::task::spawn_blocking(move || Command::new(&program_name).args(&args).current_dir(&dir).output())
            .await
            .expect("join")
            .unwrap_or_else(|e| panic!("cannot run {program} (run scripts/setup): {e}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{program} failed (run scripts/setup first):\n{stdout}\n{stderr}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_node_service_signs_a_user_in_and_reacts_to_each_failure() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/node");
    assert!(
        example.join("node_modules/@grpc/grpc-js").exists(),
        "no examples/node/node_modules (scripts/setup runs `npm ci` there)"
    );
    let node = std::env::var("WXAUTH_NODE").unwrap_or_else(|_| "node".into());
    signs_in_and_reacts_to_each_failure(true, |app, outage| {
        let script = example.join("wxauth_login.js").display().to_string();
        let app_level = APP_LEVEL_ARGS.map(String::from).to_vec();
        (node, [vec![script], failure_args(app, outage), app_level].concat())
    })
    .await;
}

/// The Java example (grpc-java, its classes generated at build from `proto/` by Maven's
/// protobuf plugin), built here offline from what `scripts/setup` fetched, so it is always the
/// current proto's.
#[tokio::test(flavor = "current_thread")]
async fn a_java_service_signs_a_user_in_and_reacts_to_each_failure() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/java");
    let mvn = std::env::var("WXAUTH_MVN").unwrap_or_else(|_| "mvn".into());
    build_step(&example, &mvn, &["--offline", "--batch-mode", "--quiet", "package"]).await;
    let java = std::env::var("WXAUTH_JAVA").unwrap_or_else(|_| "java".into());
    let jar = example.join("target/wxauth-login.jar").display().to_string();
    signs_in_and_reacts_to_each_failure(false, |app, outage| {
        (java, [vec!["-jar".into(), jar], failure_args(app, outage)].concat())
    })
    .await;
}

/// The Go example (google.golang.org/grpc, its code generated by `buf generate` with the
/// module's own protoc-gen-go and protoc-gen-go-grpc), generated and built here so it is always
/// the current proto's.
#[tokio::test(flavor = "current_thread")]
async fn a_go_service_signs_a_user_in_and_reacts_to_each_failure() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/go");
    let binary = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wxauth-login-go").display().to_string();
    build_step(&example, "buf", &["generate"]).await;
    build_step(&example, "go", &["build", "-o", &binary, "."]).await;
    signs_in_and_reacts_to_each_failure(false, |app, outage| (binary, failure_args(app, outage))).await;
}

/// The PHP example (PHP 8 and its curl extension, from Debian; no gRPC extension): the same
/// sign-in and failures through wxauth's JSON face (the Connect protocol on the gRPC port), each
/// call with a `Connect-Timeout-Ms` and a `traceparent` whose span joins the caller's trace.
#[tokio::test(flavor = "current_thread")]
async fn a_php_page_signs_a_user_in_through_json_and_reacts_to_each_failure() {
    let php = std::env::var("WXAUTH_PHP").unwrap_or_else(|_| "php".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/php/wxauth_login.php");
    signs_in_and_reacts_to_each_failure(false, |app, outage| {
        let args = [
            &script.display().to_string(),
            "--json",
            &format!("http://{}", app.grpc_addr),
            "--relay",
            &format!("http://{}", app.public_addr),
            "--app",
            "mp",
            "--key",
            PASSPORT_KEY,
            "--return-url",
            "https://passport.example.com/login/",
            "--outage-json",
            &format!("http://{}", outage.grpc_addr),
        ];
        (php, args.map(String::from).to_vec())
    })
    .await;
}
