//! The store behind Redis Sentinel: flows and tokens work through the master the Sentinel
//! names, and keep working after a failover promotes the replica; over TLS (`rediss://`
//! Sentinel URLs, `store.tls_ca_file`) both the Sentinel and the master are reached with the
//! configured CA.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tonic::Code;
use wxauth::proto::{BuildAuthorizeUrlRequest, Scope};

use crate::helpers::{free_port, settings, spawn_redis_server, spawn_settings, spawn_sim};
use crate::tls::TestPki;

struct Processes(Vec<Child>, std::path::PathBuf);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

/// The Sentinel: redis-server wants its config file as the first argument.
fn sentinel_server(dir: &std::path::Path, conf: &std::path::Path) -> Child {
    Command::new("redis-server")
        .arg(conf)
        .arg("--sentinel")
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server")
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).output().expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` every 100 ms for up to `secs` seconds.
async fn wait_for(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..secs * 10 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn request(i: usize) -> BuildAuthorizeUrlRequest {
    BuildAuthorizeUrlRequest {
        app: "mp".into(),
        return_url: "https://passport.example.com/login/".into(),
        scope: Scope::SnsapiBase as i32,
        state: format!("s{i}"),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_survive_a_sentinel_failover() {
    let dir = std::env::temp_dir().join(format!("wxauth-sentinel-{}", wxauth::random_id(8)));
    std::fs::create_dir_all(&dir).expect("dir");
    let (master, replica, sentinel) = (free_port(), free_port(), free_port());
    let mut procs = Processes(Vec::new(), dir.clone());
    let master_port = master.to_string();
    procs.0.push(spawn_redis_server(master, &[], Some(&dir)));
    let replica_port = replica.to_string();
    procs.0.push(spawn_redis_server(replica, &["--replicaof", "127.0.0.1", &master_port], Some(&dir)));
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {sentinel}\nbind 127.0.0.1\nsentinel monitor wxauth-master 127.0.0.1 {master} 1\n\
             sentinel down-after-milliseconds wxauth-master 1000\nsentinel failover-timeout wxauth-master 5000\n"
        ),
    )
    .expect("sentinel.conf");
    procs.0.push(sentinel_server(&dir, &conf));
    assert!(wait_for(10, || cli(replica, &["info", "replication"]).contains("master_link_status:up")).await);
    assert!(wait_for(20, || cli(sentinel, &["sentinel", "replicas", "wxauth-master"]).contains(&replica_port)).await);

    let (sim, sim_addr) = spawn_sim().await;
    let store =
        format!("kind = \"redis\"\nurl = \"redis://127.0.0.1:{sentinel}\"\nsentinel_master = \"wxauth-master\"");
    let app = spawn_settings(sim, sim_addr, None, settings(sim_addr, &store, "")).await;
    let flow = app.grpc.clone().build_authorize_url(app.req(request(0))).await.expect("flow").into_inner().flow_id;
    assert_eq!(cli(master, &["exists", &format!("wxauth:flow:{flow}")]).trim(), "1", "written to the master");

    // Fail over: the replica becomes the master, the old master a replica (read-only).
    // Sentinel refuses (NOGOODSLAVE) until its view of the replica is fresh; ask until it agrees.
    let mut reply = String::new();
    let agreed = wait_for(30, || {
        reply = cli(sentinel, &["sentinel", "failover", "wxauth-master"]);
        reply.contains("OK")
    })
    .await;
    assert!(agreed, "SENTINEL FAILOVER: {reply}");
    assert!(
        wait_for(20, || cli(sentinel, &["sentinel", "get-master-addr-by-name", "wxauth-master"])
            .contains(&replica_port))
        .await
    );
    assert!(wait_for(20, || cli(master, &["info", "replication"]).contains("role:slave")).await);

    // The first write after the failover may meet the old master (READONLY) and fail with
    // STORE_UNAVAILABLE; the connection is dropped and the next call asks the Sentinel again.
    let mut new_flow = None;
    for i in 1..=20 {
        match app.grpc.clone().build_authorize_url(app.req(request(i))).await {
            Ok(response) => {
                new_flow = Some(response.into_inner().flow_id);
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let new_flow = new_flow.expect("writes resume after the failover");
    assert_eq!(cli(replica, &["exists", &format!("wxauth:flow:{new_flow}")]).trim(), "1", "on the new master");
    let relayed = app.callback(&format!("code=C&state={flow}")).await;
    assert_eq!(relayed.status(), 302, "the flow written before the failover was replicated and still relays");
    drop(procs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_work_through_a_sentinel_over_tls() {
    let pki = TestPki::new();
    let dir = std::env::temp_dir().join(format!("wxauth-sentinel-tls-{}", wxauth::random_id(8)));
    std::fs::create_dir_all(&dir).expect("dir");
    let (master, sentinel) = (free_port(), free_port());
    let mut procs = Processes(Vec::new(), dir.clone());
    // Master and Sentinel listen on TLS only; the Sentinel reaches the master over TLS too.
    let master_args = pki.redis_args(master, false);
    procs.0.push(spawn_redis_server(0, &master_args.iter().map(String::as_str).collect::<Vec<_>>(), Some(&dir)));
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port 0\ntls-port {sentinel}\nbind 127.0.0.1\ntls-cert-file {cert}\ntls-key-file {key}\n\
             tls-ca-cert-file {ca}\ntls-auth-clients no\ntls-replication yes\n\
             sentinel monitor wxauth-master 127.0.0.1 {master} 1\n",
            cert = pki.path("server.crt"),
            key = pki.path("server.key"),
            ca = pki.path("ca.crt"),
        ),
    )
    .expect("sentinel.conf");
    procs.0.push(sentinel_server(&dir, &conf));
    let tls_cli = |port: u16, args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert", &pki.path("ca.crt"), "-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let master_port = master.to_string();
    assert!(
        wait_for(10, || tls_cli(sentinel, &["sentinel", "get-master-addr-by-name", "wxauth-master"])
            .contains(&master_port))
        .await,
        "the Sentinel names the master"
    );

    let (sim, sim_addr) = spawn_sim().await;
    let store = format!(
        "kind = \"redis\"\nurl = \"rediss://127.0.0.1:{sentinel}\"\nsentinel_master = \"wxauth-master\"\n\
         tls_ca_file = \"{}\"",
        pki.path("ca.crt")
    );
    let app = spawn_settings(sim, sim_addr, None, settings(sim_addr, &store, "")).await;
    let flow = app.grpc.clone().build_authorize_url(app.req(request(0))).await.expect("flow").into_inner().flow_id;
    assert_eq!(tls_cli(master, &["exists", &format!("wxauth:flow:{flow}")]).trim(), "1", "written to the master");
    let relayed = app.callback(&format!("code=C&state={flow}")).await;
    assert_eq!(relayed.status(), 302);
    drop(procs);
}
