use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use super::summary::without_credentials;
use super::*;
use crate::store::seal::Keyring;

const KEY: &str = "0000000000000000000000000000000000000000000000000000000000000001";

fn base(overrides: &str) -> String {
    format!(
        r#"
[server]
callback_url = "https://auth.example.com/wechat/callback"
[store]
url = "redis://redis:6379/0"
sealing_keys = "{keys}"
[apps.mp]
kind = "official_account"
appid = "wx0123456789abcdef"
secret = "s3cret"
default_for = "MOBILE"
[clients.passport]
key_sha256 = "{KEY}"
apps = ["mp"]
return_urls = ["https://passport.example.com/login/"]
{overrides}
"#,
        keys = Keyring::generate_line(1)
    )
}

fn key_of(toml: &str) -> String {
    Settings::from_toml(toml).map(|_| ()).expect_err("invalid").key
}

#[test]
fn a_production_config_validates_with_defaults() {
    let settings = Settings::from_toml(&base("")).expect("valid");
    assert_eq!(settings.mode, Mode::Production);
    assert_eq!(settings.server.grpc_addr.to_string(), "0.0.0.0:50051");
    assert_eq!(settings.flow.ttl, Duration::from_secs(600));
    assert_eq!(settings.token.profile_cache, Duration::from_secs(300));
    assert_eq!(settings.store.backend, StoreBackend::Redis(vec!["redis://redis:6379/0".into()]));
    assert_eq!(settings.resolve_app("", Some(Device::Mobile)).map(|a| a.name.as_str()), Some("mp"));
    assert!(settings.resolve_app("", Some(Device::Pc)).is_none());
}

#[test]
fn errors_name_the_key_at_fault() {
    assert_eq!(
        key_of(&base("").replace("callback_url = \"https://auth.example.com/wechat/callback\"", "")),
        "server.callback_url"
    );
    assert_eq!(key_of(&base("").replace("wx0123456789abcdef", "nope")), "apps.mp.appid");
    assert_eq!(key_of(&base("").replace("apps = [\"mp\"]", "apps = [\"web\"]")), "clients.passport.apps");
    assert_eq!(
        key_of(&base("").replace("passport.example.com/login/", "passport.example.com@evil")),
        "clients.passport.return_urls"
    );
    assert_eq!(key_of(&base("").replace("secret = \"s3cret\"", "")), "apps.mp.secret");
    assert_eq!(key_of(&base("[flow]\nttl = \"10s\"")), "flow.ttl");
    assert_eq!(key_of(&base("[flow]\ngrace = \"forever\"")), "flow.grace");
    assert_eq!(key_of(&base("[token]\nprofile_cache = \"2d\"")), "token.profile_cache");
    assert!(Settings::from_toml(&base("[token]\nprofile_cache = \"0s\"")).is_ok(), "0s turns it off");
    assert_eq!(key_of(&base("[token]\nuser_events_kept = 0")), "token.user_events_kept");
    assert_eq!(key_of(&base("[token]\nuser_events_kept = 1000001")), "token.user_events_kept");
    assert_eq!(key_of(&base("").replacen("[server]\n", "[server]\nbogus = 1\n", 1)), "server.bogus");
}

#[test]
fn listener_limits_have_protective_defaults_and_named_errors() {
    let settings = Settings::from_toml(&base("")).expect("valid");
    let limits = settings.server.listener_limits;
    assert_eq!(limits.header_timeout, Duration::from_secs(10));
    assert_eq!((limits.max_connections, limits.max_concurrent_requests), (4096, 1024));
    assert_eq!(limits.grpc_max_concurrent_streams, 256);
    assert_eq!(limits.grpc_max_connection_age, Duration::from_secs(600));
    let server = |line: &str| base("").replacen("[server]\n", &format!("[server]\n{line}\n"), 1);
    let set = Settings::from_toml(&server("header_timeout = \"1s\"")).expect("valid");
    assert_eq!(set.server.listener_limits.header_timeout, Duration::from_secs(1));
    let summary = set.summary();
    assert_eq!(summary["listener_limits"]["header_timeout"], "1s");
    assert_eq!(summary["listener_limits"]["max_connections"], 4096);
    assert_eq!(summary["listener_limits"]["grpc_max_connection_age"], "10m");
    for (line, key) in [
        ("header_timeout = \"0s\"", "server.header_timeout"),
        ("header_timeout = \"5m\"", "server.header_timeout"),
        ("max_connections = 0", "server.max_connections"),
        ("max_concurrent_requests = 0", "server.max_concurrent_requests"),
        ("grpc_max_concurrent_streams = 0", "server.grpc_max_concurrent_streams"),
        ("grpc_max_connection_age = \"1s\"", "server.grpc_max_connection_age"),
        ("max_connections = -1", "server.max_connections"),
    ] {
        assert_eq!(key_of(&server(line)), key, "{line}");
    }
}

#[test]
fn clients_get_default_limits_and_configured_ones() {
    let settings = Settings::from_toml(&base("")).expect("valid");
    assert_eq!(settings.clients[0].limits, ClientLimits::default());

    let limited = base(
        "max_open_flows = 200\n[clients.passport.rate_limits]\nauthorize = \"5/s\"\nauthorize_burst = 9\nuser = \"off\"",
    );
    let limits = &Settings::from_toml(&limited).expect("valid").clients[0].limits;
    let authorize = limits.rate(Family::Authorize).expect("on");
    assert_eq!((authorize.count.get(), authorize.burst.get()), (5, 9));
    assert_eq!(limits.rate(Family::Exchange), Family::Exchange.default_rate().into());
    assert_eq!(limits.rate(Family::User), None);
    assert_eq!(limits.max_open_flows, 200);
}

#[test]
fn grants_are_off_by_default_and_named_ones_are_held() {
    let settings = Settings::from_toml(&base("")).expect("valid");
    assert!(settings.clients[0].grants.is_empty(), "no grant unless given");
    let granted = Settings::from_toml(&base("grants = [\"app_access_token\", \"jssdk\"]")).expect("valid");
    let client = &granted.clients[0];
    assert!(client.holds(Grant::AppAccessToken) && client.holds(Grant::Jssdk));
    assert!(!client.holds(Grant::PhoneNumber) && !client.holds(Grant::MiniData));
    assert_eq!(granted.summary()["clients"][0]["grants"], serde_json::json!(["app_access_token", "jssdk"]));
}

#[test]
fn a_grant_unknown_or_of_no_use_to_the_clients_apps_is_refused_by_name() {
    let error = Settings::from_toml(&base("grants = [\"app_token\"]")).map(|_| ()).expect_err("unknown");
    assert_eq!(error.key, "clients.passport.grants");
    assert!(error.to_string().contains("app_access_token"), "names the known grants: {error}");
    // `mp` is an official account: no mini program to ask a phone number of.
    let error = Settings::from_toml(&base("grants = [\"phone_number\"]")).map(|_| ()).expect_err("no mini program");
    assert_eq!(error.key, "clients.passport.grants");
    assert!(error.to_string().contains("mini_program"), "{error}");
}

#[test]
fn limit_errors_name_the_key_at_fault() {
    let at = |lines: &str| key_of(&base(&format!("[clients.passport.rate_limits]\n{lines}")));
    assert_eq!(at("exchange = \"fast\""), "clients.passport.rate_limits.exchange");
    assert_eq!(at("user = \"0/s\""), "clients.passport.rate_limits.user");
    assert_eq!(at("authorize = \"5/s\"\nauthorize_burst = 0"), "clients.passport.rate_limits.authorize_burst");
    assert_eq!(at("user_burst = 10"), "clients.passport.rate_limits.user_burst");
    assert_eq!(at("refresh = \"5/s\""), "clients.passport.rate_limits.refresh");
    assert_eq!(at("exchange = 5"), "clients.passport.rate_limits.exchange");
    assert_eq!(key_of(&base("max_open_flows = 0")), "clients.passport.max_open_flows");
    assert_eq!(key_of(&base("max_open_flows = 20000000")), "clients.passport.max_open_flows");
    assert_eq!(key_of(&base("max_open_flows = -1")), "clients.passport.max_open_flows");
}

#[test]
fn a_sentinel_master_makes_the_urls_sentinels() {
    let toml = base("").replace(
        "url = \"redis://redis:6379/0\"",
        "urls = [\"redis://s1:26379\", \"redis://s2:26379\"]\nsentinel_master = \"mymaster\"",
    );
    let settings = Settings::from_toml(&toml).expect("valid");
    let urls = vec!["redis://s1:26379".to_owned(), "redis://s2:26379".to_owned()];
    assert_eq!(settings.store.backend, StoreBackend::Sentinel { urls, master: "mymaster".into() });
}

#[test]
fn production_refuses_dev_settings() {
    let demo_key = hex::encode(key_digest(DEV_CLIENT_KEY));
    assert_eq!(key_of(&base("").replace(KEY, &demo_key)), "clients.passport.key_sha256");
    let sim = base("[wechat]\napi_base = \"http://127.0.0.1:8081\"");
    assert_eq!(key_of(&sim), "wechat.api_base");
    let loopback = base("[wechat]\nopen_base = \"https://localhost:8081\"");
    assert_eq!(key_of(&loopback), "wechat.open_base");
    assert!(Settings::from_toml(&format!("mode = \"development\"\n{sim}")).is_ok());
}

#[test]
fn secret_values_never_reach_error_messages() {
    let toml = base("").replace("secret = \"s3cret\"", "secret = \"s3cret\"\nsecret_file = \"/nonexistent\"");
    let err = Settings::from_toml(&toml).map(|_| ()).expect_err("both");
    assert!(!err.to_string().contains("s3cret"));
    let debug = format!("{:?}", Settings::from_toml(&base("")).expect("valid"));
    assert!(!debug.contains("s3cret"), "{debug}");
}

/// PEM files for the TLS keys in a fresh temp dir: a CA certificate, a leaf certificate and
/// its key, and a file that is not PEM. Removed on drop.
struct PemFiles {
    dir: PathBuf,
}

impl PemFiles {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("wxauth-config-tls-{}", crate::random_id(8)));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let leaf_key = rcgen::KeyPair::generate().expect("key");
        let leaf = rcgen::CertificateParams::new(vec!["wxauth".to_owned()]).expect("params");
        let issuer = rcgen::Issuer::new(ca.clone(), &ca_key);
        std::fs::write(dir.join("ca.crt"), ca.self_signed(&ca_key).expect("ca").pem()).expect("write");
        std::fs::write(dir.join("tls.crt"), leaf.signed_by(&leaf_key, &issuer).expect("leaf").pem()).expect("write");
        std::fs::write(dir.join("tls.key"), leaf_key.serialize_pem()).expect("write");
        std::fs::write(dir.join("junk"), "not PEM at all\n").expect("write");
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The base config on `rediss://` with `tls` lines added under `[store]`.
    fn config(&self, tls: &str) -> String {
        base("").replace("url = \"redis://redis:6379/0\"", &format!("url = \"rediss://redis:6380/0\"\n{tls}"))
    }
}

impl Drop for PemFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn tls_files_are_read_and_checked_at_load() {
    let pem = PemFiles::new();
    let tls = format!(
        "tls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
        pem.path("ca.crt"),
        pem.path("tls.crt"),
        pem.path("tls.key")
    );

    let settings = Settings::from_toml(&pem.config(&tls)).expect("valid");

    let certs = settings.store.tls.certificates().expect("configured");
    assert!(certs.root_cert.is_some());
    assert!(certs.client_tls.is_some());
    let key = std::fs::read_to_string(pem.dir.join("tls.key")).expect("key");
    let body = key.lines().nth(1).expect("a base64 line");
    let debug = format!("{settings:?}");
    assert!(!debug.contains(body) && !debug.contains("PRIVATE KEY"), "{debug}");
}

#[test]
fn no_tls_files_means_no_custom_certificates() {
    let settings = Settings::from_toml(&base("")).expect("valid");
    assert!(settings.store.tls.certificates().is_none());
}

#[test]
fn tls_errors_name_the_key_at_fault() {
    let pem = PemFiles::new();
    let (cert, key, junk) = (pem.path("tls.crt"), pem.path("tls.key"), pem.path("junk"));
    let cases = [
        (format!("tls_cert_file = \"{cert}\""), "store.tls_key_file"),
        (format!("tls_key_file = \"{key}\""), "store.tls_cert_file"),
        (format!("tls_ca_file = \"{}\"", pem.path("missing.crt")), "store.tls_ca_file"),
        (format!("tls_ca_file = \"{junk}\""), "store.tls_ca_file"),
        (format!("tls_ca_file = \"{key}\""), "store.tls_ca_file"),
        (format!("tls_cert_file = \"{junk}\"\ntls_key_file = \"{key}\""), "store.tls_cert_file"),
        (format!("tls_cert_file = \"{cert}\"\ntls_key_file = \"{cert}\""), "store.tls_key_file"),
        (format!("tls_cert_file = \"{cert}\"\ntls_key_file = \"{junk}\""), "store.tls_key_file"),
    ];
    for (tls, key_at_fault) in cases {
        assert_eq!(key_of(&pem.config(&tls)), key_at_fault, "{tls}");
    }
}

#[test]
fn tls_files_without_a_rediss_url_stop_start_up() {
    let pem = PemFiles::new();
    let ca = format!("tls_ca_file = \"{}\"", pem.path("ca.crt"));
    let plain = base("").replace("url = \"redis://redis:6379/0\"", &format!("url = \"redis://redis:6379/0\"\n{ca}"));
    let error = Settings::from_toml(&plain).map(|_| ()).expect_err("plain URL");
    assert_eq!(error.key, "store.tls_ca_file");
    assert!(error.message.contains("not rediss://"), "{error}");
    let memory = plain.replace("[store]\n", "[store]\nkind = \"memory\"\n");
    assert_eq!(key_of(&memory), "store.tls_ca_file");
    let mixed = base("").replace("url = \"redis://redis:6379/0\"", "urls = [\"rediss://a:6380\", \"redis://b:6379\"]");
    assert_eq!(key_of(&mixed), "store.urls[1]");
}

#[test]
fn credentials_are_redacted_whether_or_not_the_url_parses() {
    for (url, shown) in [
        ("rediss://:PASSWORD@redis-0:6379", "rediss://***@redis-0:6379"),
        ("rediss:+/:PASSWORD@redis-1:6379", "rediss:***@redis-1:6379"),
        ("redis://user:PASSWORD@redis:6379/0", "redis://***@redis:6379/0"),
        ("redis://u:PASS@WORD@redis:6379", "redis://***@redis:6379"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        (":PASSWORD@host", "***@host"),
        ("not a url:PASSWORD@x", "***@x"),
        ("redis:/PASSWORD@h", "redis:***@h"),
        ("https://user:PASSWORD@api.example/", "https://***@api.example/"),
    ] {
        assert_eq!(without_credentials(url), shown, "{url}");
    }
}

/// The `config` fuzz target's finding: a second store URL that parses with no password
/// (`rediss:+/:...` has no authority) showed the password in `wxauth check`'s summary.
#[test]
fn the_summary_shows_no_store_password_of_any_url() {
    let urls = "urls = [\"rediss://:PASSWORD@redis-0:6379\", \"rediss:+/:PASSWORD@redis-1:6379\"]";
    let found = base("").replace("url = \"redis://redis:6379/0\"", urls);
    let error = Settings::from_toml(&found).map(|_| ()).expect_err("a store URL without a host");
    assert_eq!(error.key, "store.urls[1]");
    assert!(!error.to_string().contains("PASSWORD"), "{error}");

    let urls = "urls = [\"rediss://:PASSWORD@redis-0:6379\", \"rediss://user:PASSWORD@redis-1:6379\"]";
    let cluster = Settings::from_toml(&base("").replace("url = \"redis://redis:6379/0\"", urls)).expect("valid");
    let summary = cluster.summary().to_string();
    assert!(!summary.contains("PASSWORD"), "{summary}");
    assert!(summary.contains("rediss://***@redis-1:6379"), "{summary}");
}

#[test]
fn key_file_errors_do_not_quote_the_file() {
    let pem = PemFiles::new();
    let cert_pem = std::fs::read_to_string(pem.dir.join("tls.crt")).expect("cert");
    let body = cert_pem.lines().nth(1).expect("a base64 line");
    let tls = format!("tls_cert_file = \"{0}\"\ntls_key_file = \"{0}\"", pem.path("tls.crt"));
    let error = Settings::from_toml(&pem.config(&tls)).map(|_| ()).expect_err("a certificate is no key");
    assert!(!error.to_string().contains(body), "{error}");
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
fn env_sets_the_tls_files() {
    let pem = PemFiles::new();
    let toml = pem.config("");
    figment::Jail::expect_with(|jail| {
        jail.set_env("WXAUTH_STORE__TLS_CA_FILE", pem.path("ca.crt"));
        jail.set_env("WXAUTH_STORE__TLS_CERT_FILE", pem.path("tls.crt"));
        jail.set_env("WXAUTH_STORE__TLS_KEY_FILE", pem.path("tls.key"));
        let settings = Settings::from_sources(&toml, env_overrides()).map_err(|e| e.to_string())?;
        let certs = settings.store.tls.certificates().ok_or("no TLS from env")?;
        assert!(certs.root_cert.is_some() && certs.client_tls.is_some());
        Ok(())
    });
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
fn env_overrides_the_file_with_double_underscore_keys() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("WXAUTH_STORE__URL", "redis://other:6380/1");
        jail.set_env("WXAUTH_APPS__MP__SECRET", "from-env");
        // What Kubernetes injects for a Service named `wxauth`, and the config path.
        jail.set_env("WXAUTH_SERVICE_HOST", "10.0.0.1");
        jail.set_env("WXAUTH_PORT_50051_TCP_PORT", "50051");
        jail.set_env("WXAUTH_CONFIG", "/etc/wxauth/config.toml");
        let settings = Settings::from_sources(&base(""), env_overrides()).map_err(|e| e.to_string())?;
        assert_eq!(settings.store.backend, StoreBackend::Redis(vec!["redis://other:6380/1".into()]));
        assert_eq!(settings.apps.by_name["mp"].secret.secret(), "from-env");
        Ok(())
    });
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("non-zero")
}

#[test]
fn rates_parse_with_a_default_burst_of_one_seconds_worth() {
    let cases = [
        ("200/s", 200, 1, 200),
        (" 6000 / min ", 6000, 60, 100),
        ("1/min", 1, 60, 1),
        ("100000/h", 100_000, 3600, 28),
        ("5/second", 5, 1, 5),
    ];
    for (spec, count, per, burst) in cases {
        let rate = Rate::parse(spec, None).expect(spec).expect("on");
        assert_eq!((rate.count, rate.per, rate.burst), (nz(count), Duration::from_secs(per), nz(burst)), "{spec}");
    }
}

#[test]
fn an_explicit_burst_is_kept_and_off_is_none() {
    assert_eq!(Rate::parse("20/s", Some(500)).expect("valid").map(|r| r.burst), Some(nz(500)));
    assert_eq!(Rate::parse("off", Some(5)), Ok(None));
    assert_eq!(Rate::parse("OFF", None), Ok(None));
}

#[test]
fn malformed_rates_are_refused_with_a_reason() {
    for spec in ["", "200", "200/d", "x/s", "-1/s", "0/s", "2000000/s", "200/s/s", "1.5/s"] {
        let error = Rate::parse(spec, None).expect_err(spec);
        assert!(!error.is_empty(), "{spec}");
    }
    assert!(Rate::parse("20/s", Some(0)).expect_err("zero burst").contains("burst"));
}

#[test]
fn defaults_limit_every_family() {
    let limits = ClientLimits::default();
    assert_eq!(limits.rate(Family::Exchange).map(|r| r.describe()), Some("20/s, burst 20".to_owned()));
    assert!(Family::ALL.iter().all(|f| limits.rate(*f).is_some()));
    assert_eq!(limits.max_open_flows, rates::DEFAULT_MAX_OPEN_FLOWS);
}
