//! `wxauth-bench`: measured speed of wxauth against ceilings built from the same stack, in one
//! run on one machine (issue 5; results and method in BENCHMARKS.md).
//!
//! ```text
//! cargo run --release -p wxauth-bench -- --concurrency 64 --duration 10s
//! ```
//!
//! By default it starts everything itself: a private `redis-server` on a free port, the WeChat
//! simulator (in this process, on its own runtime, so codes are minted without a browser),
//! wxauth as a separate process (the real `wxauth` binary, built by the same `cargo run` if
//! needed, with a generated config in a temp dir, so its memory is read from
//! `/proc/<pid>/status`), and the ceiling server (this binary re-run as `__ceiling`). Then it
//! drives each operation at `--concurrency` for `--duration` after `--warmup`, each wxauth
//! operation followed by its ceilings, and prints one JSON object per line on stdout and a
//! table, the ratios and the targets on stderr. `--help` lists the flags, among them those
//! that point it at an already running wxauth and Redis instead.
//!
//! ```text
//! cargo run --release -p wxauth-bench -- soak --sign-ins 20000 --concurrency 64
//! ```
//!
//! `soak` (issue 11) runs complete sign-ins instead — BuildAuthorizeUrl, the consent page and
//! Allow, the relay, ExchangeCode, GetUserInfo — reads wxauth's memory quarter by quarter, and
//! counts Redis' keys by kind until every flow and code record has expired (`soak --help`).
//!
//! The binary's own modules sit beside the library's in `src/`: `args` (the flags and
//! `--help`), `fixture` (the apps, client and users the generated config and the simulator
//! agree on), `setup` (starting what a run measures), `phases` (the sequence of timed phases
//! and their preparation), `ops` (one request of each operation and ceiling), `oidc` (the
//! OpenID Provider's token endpoint: codes minted by whole sign-ins, the RS256 cost), `soak_cmd`
//! (`wxauth-bench soak`). This file keeps the entry points and a run's sequence.

mod args;
mod fixture;
mod oidc;
mod ops;
mod phases;
mod setup;
mod soak_cmd;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use wxauth_bench::procs::{self, Children, Memory, ScratchDir};
use wxauth_bench::report;

use crate::args::Args;
use crate::phases::Bench;

/// The same allocator as `wxauth`, so the ceilings (this binary, run as `__ceiling`) are built
/// from the same stack.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map(String::as_str) == Some("__ceiling") {
        return ceiling_main(raw.get(1).map(String::as_str).unwrap_or_default());
    }
    if raw.first().map(String::as_str) == Some("soak") {
        return soak_cmd::soak_main(&raw[1..]);
    }
    let result = Args::parse(&raw).and_then(|args| {
        let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
        runtime.block_on(run(args))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wxauth-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The ceiling server child: a runtime like wxauth's (`#[tokio::main]`: one worker per core).
fn ceiling_main(redis_url: &str) -> ExitCode {
    let served = tokio::runtime::Runtime::new().map_err(anyhow::Error::from).and_then(|rt| {
        let served = rt.block_on(wxauth_bench::ceiling::serve(redis_url));
        // Not waiting for the blocking stdin reader: it ends only when the bench exits.
        rt.shutdown_background();
        served.map_err(anyhow::Error::from)
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wxauth-bench ceiling: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A benchmark run: its children killed at the end, or on Ctrl-C.
async fn run(args: Args) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; numbers are meaningless without --release");
    }
    let children = Children::default();
    setup::kill_children_on_ctrl_c(&children);
    let result = run_with(args, &children).await;
    children.kill_all();
    result
}

/// Starts what the run measures, reads wxauth's idle memory, runs the phases, and reports.
async fn run_with(args: Args, children: &Children) -> anyhow::Result<()> {
    let (sim, sim_addr) = setup::start_sim(args.sim_listen, 0)?;
    let redis_url = setup::redis_url(&args, children).await?;
    // Holds wxauth's config and log for the whole run.
    let mut scratch = ScratchDir::create()?;
    scratch.keep = args.keep;
    let wxauth = setup::wxauth_under_test(&args, children, &mut scratch, &redis_url, sim_addr).await?;
    let pid = wxauth.pid;
    // Idle: after start-up and a moment's rest, before any load.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = pid.and_then(procs::memory);
    print_memory("idle after start-up", idle);

    let mut bench = setup::bench(args, (sim, sim_addr), wxauth, &redis_url, children).await?;
    bench.phases().await?;

    print_memory("end of run", pid.and_then(procs::memory));
    print_report(&bench, idle);
    Ok(())
}

/// wxauth's memory at `when`, as a JSON line (when its pid is known).
fn print_memory(when: &str, memory: Option<Memory>) {
    if let Some(m) = memory {
        println!(
            "{}",
            serde_json::json!({"kind": "memory", "when": when, "rss_kib": m.rss_kib, "peak_kib": m.peak_kib})
        );
    }
}

/// The ratios and the targets as JSON lines; the run's line and the table on stderr.
fn print_report(bench: &Bench, idle: Option<Memory>) {
    let ratios = report::ratios(&bench.rows);
    let checks = report::checks(&bench.rows, &ratios, idle, bench.args.concurrency);
    for r in &ratios {
        println!("{}", r.json());
    }
    for c in &checks {
        println!("{}", c.json());
    }
    eprintln!(
        "\nconcurrency {}, {} channels, warm-up {:?}, window {:?}, {} cores\n",
        bench.args.concurrency,
        bench.args.channels,
        bench.args.warmup,
        bench.args.duration,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    eprint!("{}", report::table(&bench.rows, &ratios, &checks, idle));
}
