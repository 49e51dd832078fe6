//! The `wxauth` binary: `wxauth [serve] [--config FILE]` serves (no config: dev mode with the
//! WeChat simulator); `wxauth check --config FILE` validates a config and prints what it amounts
//! to (no secrets); `wxauth gen-key [ID]` prints a new sealing-key line; `wxauth sim [ADDR]`
//! runs the WeChat simulator alone. `wxauth --help` lists them.
//!
//! The dev mode and `wxauth sim` come with the `dev` feature (on by default). A build without it
//! (the production image: `--no-default-features`) carries none of their code: there `serve`
//! needs a config, and without one says so instead of starting anything.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// jemalloc: the request path allocates many small, short-lived buffers (h2 frames, protobuf
/// messages, sealed records) across threads, where glibc's malloc showed ~10 % of the CPU time
/// and arena-lock contention in profiles under load (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use wxauth::config::Settings;
use wxauth::startup::Application;
use wxauth::store::seal::Keyring;

/// WeChat web authorization for a whole company behind one callback domain: a gRPC API, the
/// callback relay, tokens kept server-side.
#[derive(Debug, Parser)]
#[command(name = "wxauth", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    config: ConfigArg,
    #[command(subcommand)]
    command: Option<Command>,
}

/// `--config FILE`, of `wxauth` itself (`wxauth --config FILE` serves), `serve` and `check`.
#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// The config file (TOML); any key can be overridden as WXAUTH_<SECTION>__<KEY>. None: the
    /// dev mode (in a build with the `dev` feature, the default; the production image has none).
    #[arg(long, env = "WXAUTH_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the gRPC API, the relay and the admin listener (the default)
    ///
    /// Without a config: the dev mode, on loopback, with the WeChat simulator and a demo
    /// product page (README, "Quick start"). Stops, draining requests, at SIGTERM or ctrl-c.
    Serve(ConfigArg),
    /// Validate a config and print what it amounts to as JSON, without secrets
    ///
    /// Loads the file, the WXAUTH_* env, the secret and TLS files as `serve` would, starts
    /// nothing. Exit 1 names the key at fault.
    Check(ConfigArg),
    /// Print a new sealing-key line for `store.sealing_keys`
    ///
    /// The line is `<id>:<base64 of 32 random bytes>`; put it first in the keyring to seal
    /// with it (docs/operations.md, "Rotating the sealing key").
    GenKey {
        /// The key's id, 0..=255: a new id for each rotation.
        #[arg(default_value_t = 1)]
        id: u8,
    },
    /// Run the WeChat simulator alone
    #[cfg(feature = "dev")]
    ///
    /// Consent pages with test users, the sns endpoints and the /sim control API, for
    /// benchmarks and browser tests.
    Sim {
        /// The address to listen on.
        #[arg(default_value = wxauth::dev::SIM_ADDR)]
        addr: String,
    },
}

/// Runs the command; a failure is one line on stderr (the cause chain, no backtrace), exit 1.
#[tokio::main]
async fn main() -> ExitCode {
    let cli = parse_args();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("wxauth: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(Cli { config, command }: Cli) -> anyhow::Result<()> {
    match command {
        None => serve(config.config).await,
        Some(Command::Serve(own)) => serve(own.config.or(config.config)).await,
        Some(Command::Check(own)) => match own.config.or(config.config) {
            Some(path) => check(&path),
            None => usage_error("check needs --config FILE (or WXAUTH_CONFIG)"),
        },
        Some(Command::GenKey { id }) => print_key(id),
        #[cfg(feature = "dev")]
        Some(Command::Sim { addr }) => dev_mode::run_sim(&addr).await,
    }
}

/// The command line, or exit: help and version on stdout (exit 0); a usage error as one line
/// on stderr, exit 2.
fn parse_args() -> Cli {
    Cli::try_parse().unwrap_or_else(|error| {
        if !error.use_stderr() {
            error.exit();
        }
        let rendered = error.render().to_string();
        usage_error(rendered.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: "))
    })
}

/// Prints `wxauth: <message> (see wxauth --help)` and exits 2, the usual code for bad usage.
fn usage_error(message: &str) -> ! {
    eprintln!("wxauth: {message} (see wxauth --help)");
    std::process::exit(2)
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

/// Serves with the config at `config`; none: the dev mode, in a build that has it.
async fn serve(config: Option<PathBuf>) -> anyhow::Result<()> {
    #[cfg(feature = "dev")]
    let Some(path) = config else {
        return dev_mode::serve().await;
    };
    #[cfg(not(feature = "dev"))]
    let Some(path) = config else {
        usage_error(
            "serve needs --config FILE (or WXAUTH_CONFIG): this build has no dev mode (that needs the `dev` feature)",
        )
    };
    let settings = Settings::load(&path)?;
    // Kept to the end of `serve`: dropping it flushes buffered spans.
    let _telemetry = init_telemetry(&settings)?;
    let app = Application::build(settings).await.context("start-up")?;
    log_listening(&app);
    run_app(app, std::future::pending()).await
}

fn init_telemetry(settings: &Settings) -> anyhow::Result<wxauth::telemetry::TelemetryGuard> {
    Ok(wxauth::telemetry::init(&wxauth::telemetry::TelemetryConfig::from_env(settings.log.json))?)
}

fn log_listening(app: &Application) {
    tracing::info!(grpc = %app.grpc_addr(), public = %app.public_addr(), admin = %app.admin_addr(), "wxauth listening");
}

/// Serves until a signal, or until `ended` (a dev-mode service that stopped, with the reason it
/// returns; never outside the dev mode).
async fn run_app(app: Application, ended: impl Future<Output = anyhow::Error> + Send + 'static) -> anyhow::Result<()> {
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel();
    let stop = async move {
        tokio::select! {
            () = shutdown_signal() => {}
            error = ended => {
                tracing::error!("dev mode stops: {error:#}");
                let _ = failed_tx.send(error);
            }
        }
    };
    app.run_until(stop).await?;
    if let Ok(error) = failed_rx.await {
        return Err(error);
    }
    tracing::info!("stopped");
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

/// The dev mode (`wxauth` with no config) and `wxauth sim`: the WeChat simulator and the demo
/// product page next to the service, on loopback (README, "Quick start"). Only with the `dev`
/// feature.
#[cfg(feature = "dev")]
mod dev_mode {
    use anyhow::Context as _;

    /// Serves the dev mode: the simulator, the service with the dev settings, the demo page.
    pub(super) async fn serve() -> anyhow::Result<()> {
        let settings = wxauth::dev::settings()?;
        // Kept to the end of `serve`: dropping it flushes buffered spans.
        let _telemetry = super::init_telemetry(&settings)?;
        let mut dev = DevServices::default();
        start_simulator(&mut dev).await?;
        let app = wxauth::startup::Application::build(settings).await.context("start-up")?;
        super::log_listening(&app);
        start_demo(&mut dev, app.grpc_addr(), app.public_addr()).await?;
        tracing::info!(
            "dev mode: open http://{}/ and sign in with WeChat (the simulator), or try\n  grpcurl -plaintext -H 'authorization: Bearer dev-only-key' \
             -d '{{\"device\":\"DEVICE_MOBILE\",\"return_url\":\"http://127.0.0.1:8082/\",\"scope\":\"SCOPE_SNSAPI_USERINFO\"}}' \
             {} wxauth.v1.WeChatOAuthService/BuildAuthorizeUrl\nthen open the authorize_url it returns",
            wxauth::demo::DEMO_ADDR,
            app.grpc_addr()
        );
        super::run_app(app, async move { dev.ended().await }).await
    }

    /// The dev mode's own services (the WeChat simulator, the demo product page), which serve
    /// until the process stops: one that ends, fails or panics stops dev mode (a dev mode without
    /// its simulator cannot sign anyone in), with its reason logged and returned.
    #[derive(Default)]
    struct DevServices {
        tasks: tokio::task::JoinSet<anyhow::Error>,
    }

    impl DevServices {
        /// Runs `service` (named `name` in the error) until it ends.
        fn spawn<E>(&mut self, name: &'static str, service: impl Future<Output = Result<(), E>> + Send + 'static)
        where
            E: Into<anyhow::Error>,
        {
            use futures::FutureExt as _;
            self.tasks.spawn(async move {
                match std::panic::AssertUnwindSafe(service).catch_unwind().await {
                    Ok(Ok(())) => anyhow::anyhow!("the {name} stopped"),
                    Ok(Err(error)) => error.into().context(format!("the {name} failed")),
                    Err(panic) => {
                        let message = panic
                            .downcast_ref::<&str>()
                            .map(|s| (*s).to_owned())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        anyhow::anyhow!("the {name} panicked: {message}")
                    }
                }
            });
        }

        /// Why the first service ended; never, when there are none.
        async fn ended(&mut self) -> anyhow::Error {
            match self.tasks.join_next().await {
                Some(Ok(error)) => error,
                // Only a cancelled task (never: the set is only dropped with `self`).
                Some(Err(join)) => anyhow::anyhow!("a dev-mode service ended: {join}"),
                None => std::future::pending().await,
            }
        }
    }

    async fn start_simulator(dev: &mut DevServices) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(wxauth::dev::SIM_ADDR).await.context("bind the simulator")?;
        let sim = wxauth::sim::Simulator::new(wxauth::sim::SimConfig::demo());
        dev.spawn("WeChat simulator", sim.serve(listener, std::future::pending()));
        tracing::info!(addr = wxauth::dev::SIM_ADDR, "WeChat simulator listening");
        Ok(())
    }

    async fn start_demo(
        dev: &mut DevServices,
        grpc_addr: std::net::SocketAddr,
        public_addr: std::net::SocketAddr,
    ) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(wxauth::demo::DEMO_ADDR).await.context("bind the demo page")?;
        // The page is also a relying party of the OpenID Provider on the public listener.
        let issuer = format!("http://{public_addr}");
        let demo = wxauth::demo::serve_with_oidc(listener, grpc_addr, issuer, std::future::pending());
        dev.spawn("demo product page", demo);
        tracing::info!(addr = wxauth::demo::DEMO_ADDR, "demo product page listening");
        Ok(())
    }

    /// `wxauth sim ADDR`: the WeChat simulator alone, until a signal.
    pub(super) async fn run_sim(addr: &str) -> anyhow::Result<()> {
        let _telemetry = wxauth::telemetry::init(&wxauth::telemetry::TelemetryConfig::from_env(false))?;
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("bind {addr}"))?;
        tracing::info!(%addr, "WeChat simulator listening");
        wxauth::sim::Simulator::new(wxauth::sim::SimConfig::demo()).serve(listener, super::shutdown_signal()).await?;
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[tokio::test]
        async fn a_dev_service_that_fails_ends_dev_mode_with_its_reason() {
            let mut dev = DevServices::default();
            dev.spawn("WeChat simulator", async { Err(std::io::Error::other("accept failed")) });

            let error = dev.ended().await;

            assert_eq!(format!("{error:#}"), "the WeChat simulator failed: accept failed");
        }

        #[tokio::test]
        async fn a_dev_service_that_panics_or_returns_ends_dev_mode_too() {
            let mut dev = DevServices::default();
            dev.spawn("demo product page", async {
                let fail = true;
                if fail {
                    panic!("the page broke");
                }
                Ok::<(), std::io::Error>(())
            });
            assert_eq!(dev.ended().await.to_string(), "the demo product page panicked: the page broke");

            dev.spawn("WeChat simulator", async { Ok::<(), std::io::Error>(()) });
            assert_eq!(dev.ended().await.to_string(), "the WeChat simulator stopped");
        }

        #[tokio::test]
        async fn without_dev_services_nothing_ends() {
            let mut dev = DevServices::default();
            let waited = tokio::time::timeout(std::time::Duration::from_millis(20), dev.ended()).await;
            assert!(waited.is_err(), "outside dev mode only a signal stops wxauth");
        }
    }
}
