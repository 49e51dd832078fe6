//! Logging: a `tracing` subscriber, human-readable by default and JSON by config, filtered by
//! `RUST_LOG` (default `info`).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Call once, from `main`.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    let installed = if json { builder.json().try_init() } else { builder.try_init() };
    if installed.is_err() {
        tracing::debug!("a tracing subscriber was already installed");
    }
}
