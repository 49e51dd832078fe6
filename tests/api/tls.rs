//! The store over TLS (`rediss://`) against a real redis-server whose certificate comes from a
//! private CA made at test time (the Kubernetes case: cert-manager, a managed Redis with its own
//! CA). A whole flow works with `store.tls_ca_file`, and with a client certificate
//! (`store.tls_cert_file`, `store.tls_key_file`) when Redis requires one; without the CA, or
//! without the client certificate that Redis requires, start-up fails with an error that says
//! what is wrong with the certificates and holds no secret.

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use wxauth::clock::Clock;
use wxauth::proto::{BuildAuthorizeUrlRequest, Scope};
use wxauth::startup::Application;

use crate::helpers::{
    MP_APPID, Relayed, free_port, settings, spawn_redis_server, spawn_settings, spawn_sim, test_keyring, wait_listening,
};

/// A throwaway PKI in its own temp dir: a CA, a server certificate for 127.0.0.1 and a client
/// certificate, as the PEM files redis-server and wxauth read. Removed on drop.
pub struct TestPki {
    pub dir: PathBuf,
}

impl TestPki {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("wxauth-tls-{}", wxauth::random_id(8)));
        std::fs::create_dir_all(&dir).expect("dir");

        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.distinguished_name.push(DnType::CommonName, "wxauth test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        std::fs::write(dir.join("ca.crt"), ca.self_signed(&ca_key).expect("CA cert").pem()).expect("write");
        let issuer = Issuer::new(ca, &ca_key);

        // The server certificate also serves Redis as a client (the cluster bus, replication).
        let leaf = |name: &str, sans: Vec<String>, usages: Vec<ExtendedKeyUsagePurpose>| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(sans).expect("params");
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = usages;
            let cert = params.signed_by(&key, &issuer).expect("signed");
            std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).expect("write");
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("write");
        };
        let both = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        leaf("server", vec!["127.0.0.1".into(), "localhost".into()], both);
        leaf("client", Vec::new(), vec![ExtendedKeyUsagePurpose::ClientAuth]);
        Self { dir }
    }

    /// The path of one of the PEM files (`ca.crt`, `server.crt`, `client.key`, ...).
    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// redis-server arguments: TLS only, with this PKI, client certificates required or not.
    pub fn redis_args(&self, tls_port: u16, require_client_cert: bool) -> Vec<String> {
        let auth = if require_client_cert { "yes" } else { "no" };
        [
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &self.path("server.crt"),
            "--tls-key-file",
            &self.path("server.key"),
            "--tls-ca-cert-file",
            &self.path("ca.crt"),
            "--tls-auth-clients",
            auth,
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A redis-server that speaks TLS only (`--port 0`), killed on drop.
struct TlsRedis {
    port: u16,
    child: Child,
}

impl TlsRedis {
    async fn start(pki: &TestPki, require_client_cert: bool) -> Self {
        for _ in 0..20 {
            let port = free_port();
            let args = pki.redis_args(port, require_client_cert);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut child = spawn_redis_server(0, &args, Some(&pki.dir));
            if wait_listening(&mut child, port).await {
                return Self { port, child };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start a TLS redis-server");
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `[store]` lines for a `rediss://` URL and the given `store.tls_*` lines.
fn store(url: &str, tls: &str) -> String {
    format!("kind = \"redis\"\nurl = \"{url}\"\n{tls}")
}

/// An error and all its causes, as an operator reads them in the start-up log.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Starts wxauth with `store` and returns why start-up failed.
async fn start_up_error(store: &str, pki: &TestPki) -> String {
    let (_sim, sim_addr) = spawn_sim().await;
    let started = std::time::Instant::now();
    let built = Application::build_with_clock(settings(sim_addr, store, ""), Clock::system()).await;
    let error = chain(&built.expect_err("start-up must fail"));
    assert!(started.elapsed() < Duration::from_secs(15), "start-up gave up after {:?}", started.elapsed());
    // No secret in what the operator sees: not the client key, not the sealing key or an
    // appsecret of the test config.
    let client_key = std::fs::read_to_string(pki.dir.join("client.key")).expect("key");
    let key_line = client_key.lines().nth(1).expect("a base64 line");
    for secret in [key_line, "demo-mp-secret", "demo-web-secret", &test_keyring()[2..]] {
        assert!(!error.contains(secret), "the start-up error leaks a secret: {error}");
    }
    error
}

/// BuildAuthorizeUrl, the relay, ExchangeCode and GetUserInfo, all through the store.
async fn a_whole_flow(app: &crate::helpers::TestApp) {
    let request = BuildAuthorizeUrlRequest {
        app: "mp".into(),
        return_url: "https://passport.example.com/login/".into(),
        scope: Scope::SnsapiUserinfo as i32,
        state: "csrf-1".into(),
        ..Default::default()
    };
    let flow = app.grpc.clone().build_authorize_url(app.req(request)).await.expect("flow").into_inner().flow_id;
    let code = app.code(MP_APPID, "alice", "snsapi_userinfo");
    let relayed = app.callback(&format!("code={code}&state={flow}")).await;
    assert_eq!(relayed.status(), 302);
    let location = relayed.headers()["location"].to_str().expect("ascii");
    assert_eq!(location, format!("https://passport.example.com/login/?code={code}&state=csrf-1"));

    let code = Relayed { flow_id: flow, code };
    let login = app.exchange("mp", &code).await.expect("exchange");
    assert_eq!(app.exchange("mp", &code).await.expect("the same code again"), login);
    let profile = app.user_info(&login.openid).await.expect("profile");
    assert_eq!(profile.openid, login.openid);
    assert_eq!(profile.nickname, "Alice 爱丽丝");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_flow_works_over_tls_with_a_private_ca() {
    let pki = TestPki::new();
    let redis = TlsRedis::start(&pki, false).await;
    let (sim, sim_addr) = spawn_sim().await;
    let tls = format!("tls_ca_file = \"{}\"", pki.path("ca.crt"));
    let app = spawn_settings(sim, sim_addr, None, settings(sim_addr, &store(&redis.url(), &tls), "")).await;

    a_whole_flow(&app).await;

    // The records are in that Redis, reached over TLS with the same CA.
    let ca = std::fs::read(pki.dir.join("ca.crt")).expect("ca");
    let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(ca) };
    let client = redis::Client::build_with_tls(redis.url(), certs).expect("client");
    let mut conn = client.get_multiplexed_async_connection().await.expect("TLS connection");
    let keys: Vec<String> = redis::cmd("KEYS").arg("wxauth:*").query_async(&mut conn).await.expect("keys");
    assert!(keys.iter().any(|k| k.starts_with("wxauth:flow:")), "{keys:?}");
    assert!(keys.iter().any(|k| k.starts_with("wxauth:mp:tok:")), "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_works_with_a_client_certificate() {
    let pki = TestPki::new();
    let redis = TlsRedis::start(&pki, true).await;
    let (sim, sim_addr) = spawn_sim().await;
    let tls = format!(
        "tls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
        pki.path("ca.crt"),
        pki.path("client.crt"),
        pki.path("client.key")
    );
    let app = spawn_settings(sim, sim_addr, None, settings(sim_addr, &store(&redis.url(), &tls), "")).await;

    a_whole_flow(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ca_the_server_certificate_is_refused() {
    let pki = TestPki::new();
    let redis = TlsRedis::start(&pki, false).await;

    let error = start_up_error(&store(&redis.url(), ""), &pki).await;

    assert!(error.starts_with("cannot connect to the store"), "{error}");
    assert!(error.to_lowercase().contains("certificate"), "the error should say it is the certificate: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_without_a_client_certificate_is_refused() {
    let pki = TestPki::new();
    let redis = TlsRedis::start(&pki, true).await;
    let tls = format!("tls_ca_file = \"{}\"", pki.path("ca.crt"));

    let error = start_up_error(&store(&redis.url(), &tls), &pki).await;

    assert!(error.starts_with("cannot connect to the store"), "{error}");
    assert!(error.to_lowercase().contains("certificate"), "the error should say it is the certificate: {error}");
}
