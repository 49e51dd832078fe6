//! `wxauth_bench`: the benchmark harness behind the `wxauth-bench` binary (issue 5, BENCHMARKS.md): it drives
//! wxauth's RPCs and relay at a fixed concurrency for a fixed time, and the same load against
//! *ceilings* — servers built from the same stack (tonic, axum, redis-rs, the simulator) doing
//! only the one store or upstream operation each wxauth operation cannot avoid — so every
//! wxauth figure is read as a fraction of what the stack allows on this machine.
//!
//! Layout:
//! - `load`: the closed-loop driver (N workers, warm-up, timed window, HDR latency histograms,
//!   errors by gRPC code / HTTP status / WeChat errcode).
//! - `ceiling`: the ceiling servers: a bare tonic unary handler doing one Redis `SET PX` or
//!   `GET`, and bare axum handlers doing `GETDEL` + 302 (the relay) and `GETDEL` + a JSON
//!   answer (the OpenID token endpoint); run in a child process like wxauth.
//! - `procs`: the processes a run owns (a private `redis-server`, wxauth, the ceiling server),
//!   free ports, and resident-memory readings from `/proc/<pid>/status`.
//! - `report`: one JSON object per line, the readable table, ratios and the targets.
//! - `soak`: `wxauth-bench soak` (issue 11): many complete sign-ins through the consent page
//!   and the relay, wxauth's memory quarter by quarter, and Redis' keys counted by kind until
//!   the flows and code records have expired.
//!
//! The binary's own modules (`args`, `fixture`, `setup`, `phases`, `ops`, `soak_cmd`) sit
//! beside these files in `src/` but belong to `main.rs`, not to this library.
//!
//! A workspace member of its own (issue 13): the service's library and binary carry none of it.
//! It reaches wxauth only through the library's public API (the generated types, the
//! simulator, the relay's path, the config's key digest and the keyring's line).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ceiling;
pub mod load;
pub mod procs;
pub mod report;
pub mod soak;
