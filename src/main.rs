//! The `wxauth` binary: `wxauth [--config FILE]` serves (no config: dev mode with the WeChat
//! simulator); `wxauth check [--config FILE]` validates a config and prints what it amounts to
//! (no secrets); `wxauth gen-key [ID]` prints a new sealing-key line; `wxauth sim [ADDR]` runs
//! the WeChat simulator alone.

use std::path::PathBuf;

use anyhow::Context as _;

/// jemalloc: the request path allocates many small, short-lived buffers (h2 frames, protobuf
/// messages, sealed records) across threads, where glibc's malloc showed ~10 % of the CPU time
/// and arena-lock contention in profiles under load (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use wxauth::config::Settings;
use wxauth::startup::Application;
use wxauth::store::seal::Keyring;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["gen-key"] => print_key(1),
        ["gen-key", id] => print_key(id.parse().context("key id: 0..=255")?),
        ["sim"] => run_sim(wxauth::dev::SIM_ADDR).await,
        ["sim", addr] => run_sim(addr).await,
        ["check", "--config", path] => check(&PathBuf::from(path)),
        ["check"] => match std::env::var_os("WXAUTH_CONFIG") {
            Some(path) => check(&PathBuf::from(path)),
            None => anyhow::bail!("wxauth check: give --config FILE (or set WXAUTH_CONFIG)"),
        },
        ["--config", path] => serve(Some(PathBuf::from(path))).await,
        [] => serve(std::env::var_os("WXAUTH_CONFIG").map(PathBuf::from)).await,
        _ => anyhow::bail!(
            "usage: wxauth [--config FILE] | wxauth check [--config FILE] | wxauth gen-key [ID] | wxauth sim [ADDR]"
        ),
    }
}

/// Loads and validates the config as `serve` would (file, `WXAUTH_*` env, secret files, TLS
/// files) without starting anything; prints the summary as JSON. Exit 1 names the key at fault.
fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let settings = Settings::load(path)?;
    println!("{}", serde_json::to_string_pretty(&settings.summary())?);
    eprintln!("wxauth check: {} is valid", path.display());
    Ok(())
}

fn print_key(id: u8) -> anyhow::Result<()> {
    // The command's output is the key itself, for a Secret; it is not logged.
    println!("{}", Keyring::generate_line(id));
    Ok(())
}

async fn serve(config: Option<PathBuf>) -> anyhow::Result<()> {
    let settings = match &config {
        Some(path) => Settings::load(path)?,
        None => wxauth::dev::settings()?,
    };
    // Kept to the end of `serve`: dropping it flushes buffered spans.
    let _telemetry = wxauth::telemetry::init(&wxauth::telemetry::TelemetryConfig::from_env(settings.log_json))?;
    if config.is_none() {
        start_dev_simulator().await?;
    }
    let app = Application::build(settings).await.context("start-up")?;
    tracing::info!(grpc = %app.grpc_addr(), public = %app.public_addr(), admin = %app.admin_addr(), "wxauth listening");
    if config.is_none() {
        start_dev_demo(app.grpc_addr()).await?;
        tracing::info!(
            "dev mode: open http://{}/ and sign in with WeChat (the simulator), or try\n  grpcurl -plaintext -H 'authorization: Bearer dev-only-key' \
             -d '{{\"device\":\"DEVICE_MOBILE\",\"return_url\":\"http://127.0.0.1:8082/\",\"scope\":\"SCOPE_SNSAPI_USERINFO\"}}' \
             {} wxauth.v1.WeChatOAuthService/BuildAuthorizeUrl\nthen open the authorize_url it returns",
            wxauth::demo::DEMO_ADDR,
            app.grpc_addr()
        );
    }
    app.run_until(shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn start_dev_simulator() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(wxauth::dev::SIM_ADDR).await.context("bind the simulator")?;
    let sim = wxauth::sim::Simulator::new(wxauth::sim::SimConfig::demo());
    tokio::spawn(sim.serve(listener, std::future::pending()));
    tracing::info!(addr = wxauth::dev::SIM_ADDR, "WeChat simulator listening");
    Ok(())
}

async fn start_dev_demo(grpc_addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(wxauth::demo::DEMO_ADDR).await.context("bind the demo page")?;
    tokio::spawn(async move {
        if let Err(error) = wxauth::demo::serve(listener, grpc_addr, std::future::pending()).await {
            tracing::warn!(%error, "demo page stopped");
        }
    });
    tracing::info!(addr = wxauth::demo::DEMO_ADDR, "demo product page listening");
    Ok(())
}

async fn run_sim(addr: &str) -> anyhow::Result<()> {
    let _telemetry = wxauth::telemetry::init(&wxauth::telemetry::TelemetryConfig::from_env(false))?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("bind {addr}"))?;
    tracing::info!(%addr, "WeChat simulator listening");
    wxauth::sim::Simulator::new(wxauth::sim::SimConfig::demo()).serve(listener, shutdown_signal()).await?;
    Ok(())
}

/// Completes at SIGTERM or ctrl-c. A second signal exits at once.
async fn shutdown_signal() {
    wait_signal().await;
    tokio::spawn(async {
        wait_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(1);
    });
}

async fn wait_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
