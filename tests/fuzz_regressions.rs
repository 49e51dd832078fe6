//! The fuzz targets as regression tests: every committed input of each target
//! (`fuzz/corpus/TARGET/`, the seeds, and `fuzz/regressions/TARGET/`, every crash once found) is
//! run once through the target's own code, with no random exploration, so `./scripts/test`
//! passes or fails by the code alone. Open-ended exploration is `./scripts/fuzz`
//! (docs/fuzzing.md).
//!
//! The targets are compiled here from their own files (`fuzz/fuzz_targets/*.rs`), not copies:
//! `fuzz_target!` is defined below as a plain function `run(data)`, and `libfuzzer_sys` names this
//! crate, so `use libfuzzer_sys::fuzz_target;` in a target finds that macro. Compared with
//! replaying through libFuzzer (`cargo fuzz run TARGET DIR -- -runs=0`), this needs no
//! instrumented, sanitized build of the whole tree (390–650 s cold); what it gives up is
//! AddressSanitizer (the service is `#![forbid(unsafe_code)]`; its dependencies' unsafe code is
//! not checked here), LeakSanitizer, and libFuzzer's per-input time and memory limits. A debug
//! build has debug assertions and overflow checks on, as the fuzz build has.

// `fuzz_target!` and `libfuzzer_sys` as the targets' files expect them (see the module docs).
extern crate self as libfuzzer_sys;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

// Each target file starts with `#![no_main]`, a crate attribute that means nothing in a module.
#[allow(unused_attributes)]
#[path = "../fuzz/fuzz_targets/allowlist.rs"]
mod allowlist;
#[allow(unused_attributes)]
#[path = "../fuzz/fuzz_targets/callback_query.rs"]
mod callback_query;
#[allow(unused_attributes)]
#[path = "../fuzz/fuzz_targets/config.rs"]
mod config;
#[allow(unused_attributes)]
#[path = "../fuzz/fuzz_targets/connect_json.rs"]
mod connect_json;
#[allow(unused_attributes)]
#[path = "../fuzz/fuzz_targets/oidc_authorize.rs"]
mod oidc_authorize;
#[allow(unused_attributes)]
#[path = "../fuzz/fuzz_targets/oidc_token.rs"]
mod oidc_token;
#[allow(unused_attributes)]
#[path = "../fuzz/fuzz_targets/push_message.rs"]
mod push_message;
#[allow(unused_attributes)]
#[path = "../fuzz/fuzz_targets/sealed_record.rs"]
mod sealed_record;
#[allow(unused_attributes)]
#[path = "../fuzz/fuzz_targets/wechat_response.rs"]
mod wechat_response;

/// A target's body as one function over the input bytes. Defined after the targets' modules, so
/// they reach it only as their files say, through `use libfuzzer_sys::fuzz_target;`.
macro_rules! fuzz_target {
    (|$data:ident: &[u8]| $body:block) => {
        pub fn run($data: &[u8]) $body
    };
}
pub(crate) use fuzz_target;

/// Every target replayed here, by the name `fuzz/Cargo.toml` gives it.
const TARGETS: [&str; 9] = [
    "allowlist",
    "callback_query",
    "config",
    "connect_json",
    "oidc_authorize",
    "oidc_token",
    "push_message",
    "sealed_record",
    "wechat_response",
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The committed inputs of `target`: its seeds and its past crashes, sorted by path.
fn inputs(target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [fuzz_dir().join("corpus").join(target), fuzz_dir().join("regressions").join(target)] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            // README.md in a regressions folder says where its inputs came from.
            if path.is_file() && path.file_name().is_some_and(|n| n != "README.md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Runs every committed input of `target` through `run`; fails naming each input that panics
/// (a failed assertion of the target is a panic), after trying them all.
fn replay(target: &str, run: fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no committed inputs for the fuzz target `{target}`");
    let mut failed = Vec::new();
    for path in &files {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| run(&data))) {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(a panic without a message)");
            failed.push(format!("{}: {message}", path.display()));
        }
    }
    assert!(
        failed.is_empty(),
        "fuzz target `{target}` fails {} of {} inputs:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
    println!("fuzz target `{target}`: {} inputs replayed", files.len());
}

#[test]
fn the_allowlist_target_passes_every_committed_input() {
    replay("allowlist", allowlist::run);
}

#[test]
fn the_callback_query_target_passes_every_committed_input() {
    replay("callback_query", callback_query::run);
}

#[test]
fn the_config_target_passes_every_committed_input() {
    replay("config", config::run);
}

#[test]
fn the_connect_json_target_passes_every_committed_input() {
    replay("connect_json", connect_json::run);
}

#[test]
fn the_oidc_authorize_target_passes_every_committed_input() {
    replay("oidc_authorize", oidc_authorize::run);
}

#[test]
fn the_oidc_token_target_passes_every_committed_input() {
    replay("oidc_token", oidc_token::run);
}

#[test]
fn the_push_message_target_passes_every_committed_input() {
    replay("push_message", push_message::run);
}

#[test]
fn the_sealed_record_target_passes_every_committed_input() {
    replay("sealed_record", sealed_record::run);
}

#[test]
fn the_wechat_response_target_passes_every_committed_input() {
    replay("wechat_response", wechat_response::run);
}

/// A target added to `fuzz/Cargo.toml` without a replay here fails, and so does a corpus or
/// regressions folder of no target.
#[test]
fn every_fuzz_target_and_input_folder_is_replayed() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let mut declared: Vec<&str> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|bin| bin.lines().find_map(|l| l.trim().strip_prefix("name = ")))
        .map(|name| name.trim_matches('"'))
        .collect();
    declared.sort_unstable();
    assert_eq!(declared, TARGETS, "fuzz/Cargo.toml's targets and this file's replays");
    for folder in ["corpus", "regressions"] {
        for entry in std::fs::read_dir(fuzz_dir().join(folder)).expect(folder) {
            let name = entry.expect("a directory entry").file_name();
            let name = name.to_string_lossy();
            assert!(name == "README.md" || TARGETS.contains(&&*name), "fuzz/{folder}/{name} is no target's");
        }
    }
}
