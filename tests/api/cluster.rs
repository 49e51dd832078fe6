//! The store on a real Redis Cluster (three masters, slots spread): every operation touches one
//! key, so flows, tokens, exchange records, locks and the Lua scripts all work there, over plain
//! TCP and over TLS (`rediss://` node URLs, `store.tls_ca_file`).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use wxauth::proto::{BuildAuthorizeUrlRequest, Lang, RefreshTokenRequest, Scope};
use wxauth::sim::Endpoint;

use crate::helpers::{MP_APPID, Relayed, free_port, settings, spawn_redis_server, spawn_settings, spawn_sim};
use crate::tls::TestPki;

/// Three cluster-enabled redis-servers joined into one cluster; killed on drop.
struct RedisCluster {
    nodes: Vec<(u16, Child)>,
    dir: std::path::PathBuf,
    /// redis-cli's arguments to reach a node (`--tls --cacert ...` for a TLS cluster).
    cli_tls: Vec<String>,
}

impl RedisCluster {
    fn cli(&self, port: u16, args: &[&str]) -> std::process::Output {
        Command::new("redis-cli").args(&self.cli_tls).args(["-p", &port.to_string()]).args(args).output().expect("cli")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A cluster on plain TCP, or with `tls` one that speaks TLS only: to clients, on the cluster
/// bus and for replication (`--tls-cluster`, `--tls-replication`), so the node addresses
/// CLUSTER SLOTS gives are TLS ports too.
async fn start_cluster(tls: Option<&TestPki>) -> RedisCluster {
    let dir = std::env::temp_dir().join(format!("wxauth-cluster-{}", wxauth::random_id(8)));
    std::fs::create_dir_all(&dir).expect("dir");
    let cli_tls = match tls {
        Some(pki) => vec!["--tls".to_owned(), "--cacert".to_owned(), pki.path("ca.crt")],
        None => Vec::new(),
    };
    let mut cluster = RedisCluster { nodes: Vec::new(), dir: dir.clone(), cli_tls };
    for _ in 0..3 {
        let port = free_port();
        let nodes_conf = format!("nodes-{port}.conf");
        let mut extra: Vec<String> =
            ["--cluster-enabled", "yes", "--cluster-config-file", &nodes_conf].map(str::to_owned).to_vec();
        let child = match tls {
            Some(pki) => {
                extra.extend(pki.redis_args(port, false));
                extra.extend(["--tls-cluster", "yes", "--tls-replication", "yes"].map(str::to_owned));
                spawn_redis_server(0, &extra.iter().map(String::as_str).collect::<Vec<_>>(), Some(&dir))
            }
            None => spawn_redis_server(port, &extra.iter().map(String::as_str).collect::<Vec<_>>(), Some(&dir)),
        };
        cluster.nodes.push((port, child));
    }
    for (port, _) in &cluster.nodes {
        let mut up = false;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", *port)).await.is_ok() {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(up, "node {port} up");
    }
    let addrs: Vec<String> = cluster.nodes.iter().map(|(p, _)| format!("127.0.0.1:{p}")).collect();
    let created = Command::new("redis-cli")
        .args(&cluster.cli_tls)
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("redis-cli (scripts/setup installs redis-tools with redis-server)");
    assert!(created.success(), "cluster created");
    for (port, _) in &cluster.nodes {
        let mut ok = false;
        for _ in 0..300 {
            let info = cluster.cli(*port, &["cluster", "info"]);
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ok, "node {port} sees the cluster ok");
    }
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_flow_works_on_a_redis_cluster() {
    let cluster = start_cluster(None).await;
    let urls: Vec<String> = cluster.nodes.iter().map(|(p, _)| format!("\"redis://127.0.0.1:{p}\"")).collect();
    let store = format!("kind = \"redis\"\nurls = [{}]", urls.join(", "));
    a_whole_flow_on(&cluster, &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_flow_works_on_a_redis_cluster_over_tls() {
    let pki = TestPki::new();
    let cluster = start_cluster(Some(&pki)).await;
    let urls: Vec<String> = cluster.nodes.iter().map(|(p, _)| format!("\"rediss://127.0.0.1:{p}\"")).collect();
    let store = format!("kind = \"redis\"\nurls = [{}]\ntls_ca_file = \"{}\"", urls.join(", "), pki.path("ca.crt"));
    a_whole_flow_on(&cluster, &store).await;
}

/// Twenty flows relayed and exchanged, a profile and a refresh, on `cluster` through `store`.
async fn a_whole_flow_on(cluster: &RedisCluster, store: &str) {
    let (sim, sim_addr) = spawn_sim().await;
    let app = spawn_settings(sim, sim_addr, None, settings(sim_addr, store, "")).await;

    let mut flows = Vec::new();
    for i in 0..20 {
        let request = BuildAuthorizeUrlRequest {
            app: "mp".into(),
            return_url: format!("https://passport.example.com/login/{i}"),
            scope: Scope::SnsapiUserinfo as i32,
            state: format!("s{i}"),
            ..Default::default()
        };
        flows.push(app.grpc.clone().build_authorize_url(app.req(request)).await.expect("flow").into_inner().flow_id);
    }
    for (i, flow) in flows.into_iter().enumerate() {
        let code = app.code(MP_APPID, "alice", "snsapi_userinfo");
        let relayed = app.callback(&format!("code={code}&state={flow}")).await;
        let location = relayed.headers()["location"].to_str().expect("ascii");
        assert_eq!(location, format!("https://passport.example.com/login/{i}?code={code}&state=s{i}"));
        let code = Relayed { flow_id: flow.clone(), code };
        let login = app.exchange("mp", &code).await.expect("exchange");
        assert_eq!(app.exchange("mp", &code).await.expect("idempotent"), login);
    }
    assert_eq!(app.sim.calls(Endpoint::AccessToken), 20);

    let login = app.login("bob", "snsapi_userinfo").await;
    app.user_info(&login.openid).await.expect("profile");
    // A cached GetUserInfo reads the client's claim and the profile in one MGET; here their keys
    // sit in two slots, so the cluster client splits it by slot and joins the answers.
    let slot = |key: String| {
        String::from_utf8_lossy(&cluster.cli(cluster.nodes[0].0, &["cluster", "keyslot", &key]).stdout)
            .trim()
            .to_owned()
    };
    let (reach, profile) =
        (format!("wxauth:mp:reach:{}:passport", login.openid), format!("wxauth:mp:prof:{}:zh_CN", login.openid));
    for key in [&reach, &profile] {
        let exists = cluster.cli(cluster.nodes[0].0, &["-c", "exists", key]);
        assert_eq!(String::from_utf8_lossy(&exists.stdout).trim(), "1", "{key} is stored");
    }
    assert_ne!(slot(reach), slot(profile), "the claim and the profile in two slots");
    let cached = app.profile(&login.openid, Lang::Unspecified, false).await.expect("cached profile");
    assert_eq!(cached.user_info.expect("user_info").openid, login.openid);
    assert_eq!(app.sim.calls(Endpoint::UserInfo), 1, "answered from the cache, across two slots");
    let request = RefreshTokenRequest { app: "mp".into(), openid: login.openid.clone(), device: 0 };
    app.grpc.clone().refresh_token(app.req(request)).await.expect("refresh takes and releases the lock");
    assert_eq!(app.sim.calls(Endpoint::RefreshToken), 1);

    // The keys really are spread over the masters.
    let mut masters_with_keys = 0;
    for (port, _) in &cluster.nodes {
        let out = cluster.cli(*port, &["dbsize"]);
        let keys: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
        masters_with_keys += u64::from(keys > 0);
    }
    assert!(masters_with_keys >= 2, "keys on {masters_with_keys} masters");
}
