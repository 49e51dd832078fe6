//! The processes a benchmark run owns — a private `redis-server` on a free port, wxauth (the
//! real `wxauth` binary with a generated config), the ceiling server — killed when their guard
//! drops, and the resident memory of a process read from `/proc/<pid>/status`.

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Why a process of the run could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The program could not be run at all.
    #[error("cannot run {program}: {source} ({hint})")]
    Spawn {
        /// What was run.
        program: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// It ran but did not become ready in time.
    #[error("{0}")]
    NotReady(String),
    /// A file of the run could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Every child process of the run; killed on [`Children::kill_all`] and on drop, so a failed or
/// interrupted run leaves no redis-server or wxauth behind.
#[derive(Clone, Default)]
pub struct Children(Arc<Mutex<Vec<(String, Child)>>>);

impl std::fmt::Debug for Children {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Children").finish_non_exhaustive()
    }
}

impl Children {
    /// Adopts a child; returns its pid.
    pub fn adopt(&self, name: &str, child: Child) -> u32 {
        let pid = child.id();
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push((name.to_owned(), child));
        pid
    }

    /// Whether the child with `pid` has exited, and how.
    pub fn exited(&self, pid: u32) -> Option<std::process::ExitStatus> {
        let mut children = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        children.iter_mut().find(|(_, c)| c.id() == pid).and_then(|(_, c)| c.try_wait().ok().flatten())
    }

    /// Kills (SIGKILL) and reaps every child, newest first.
    pub fn kill_all(&self) {
        let mut children = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some((_, mut child)) = children.pop() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback port free right now (the usual small race with other programs applies).
pub fn free_port() -> std::io::Result<u16> {
    TcpListener::bind("127.0.0.1:0")?.local_addr().map(|a| a.port())
}

/// Waits until something accepts TCP connections at `addr`, or `limit` passes.
pub async fn wait_listening(addr: SocketAddr, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Starts a private `redis-server` (no persistence) on a free loopback port, as the tests do;
/// `REDIS_SERVER_BIN` overrides the program. Returns its URL.
pub async fn start_redis(children: &Children) -> Result<String, ProcError> {
    let program = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
    for _ in 0..10 {
        let port = free_port().map_err(|e| ProcError::NotReady(format!("no free port: {e}")))?;
        let child = Command::new(&program)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| ProcError::Spawn {
                program: program.clone(),
                source,
                hint: "install redis-server (scripts/setup) or set REDIS_SERVER_BIN, or pass --redis URL",
            })?;
        let pid = children.adopt("redis-server", child);
        if wait_listening(SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(5)).await
            && children.exited(pid).is_none()
        {
            return Ok(format!("redis://127.0.0.1:{port}/0"));
        }
    }
    Err(ProcError::NotReady("redis-server did not start on any of 10 free ports".into()))
}

/// A scratch directory for the run's config and logs, removed on drop unless kept.
#[derive(Debug)]
pub struct ScratchDir {
    /// Its path.
    pub path: PathBuf,
    /// Keep it (a failed run's logs are worth reading).
    pub keep: bool,
}

impl ScratchDir {
    /// Creates `$TMPDIR/wxauth-bench-<pid>`.
    pub fn create() -> Result<Self, ProcError> {
        let path = std::env::temp_dir().join(format!("wxauth-bench-{}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|source| ProcError::Write { path: path.clone(), source })?;
        Ok(Self { path, keep: false })
    }

    /// Writes `name` in the directory and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> Result<PathBuf, ProcError> {
        let path = self.path.join(name);
        std::fs::write(&path, contents).map_err(|source| ProcError::Write { path: path.clone(), source })?;
        Ok(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A running wxauth child.
#[derive(Debug)]
pub struct Wxauth {
    /// Its pid, for `/proc/<pid>/status`.
    pub pid: u32,
    /// Its gRPC address.
    pub grpc: SocketAddr,
    /// Its public (relay) address.
    pub public: SocketAddr,
    /// Its admin address (`/readyz`, `/metrics`).
    pub admin: SocketAddr,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

/// Starts `program --config <config>` with its listeners on the given addresses, logging to
/// `log`, with no `WXAUTH_*` or OTLP variables inherited (the config file is the whole
/// configuration) and `RUST_LOG=log_level`; waits until `/readyz` answers 200.
pub async fn start_wxauth(
    children: &Children,
    program: &Path,
    config: &Path,
    addrs: (SocketAddr, SocketAddr, SocketAddr),
    log: PathBuf,
    log_level: &str,
) -> Result<Wxauth, ProcError> {
    let log_file = std::fs::File::create(&log).map_err(|source| ProcError::Write { path: log.clone(), source })?;
    let log_err = log_file.try_clone().map_err(|source| ProcError::Write { path: log.clone(), source })?;
    let mut command = Command::new(program);
    command.arg("--config").arg(config).env("RUST_LOG", log_level);
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("WXAUTH_") || key_text.starts_with("OTEL_") {
            command.env_remove(&key);
        }
    }
    let child =
        command.stdin(Stdio::null()).stdout(log_file).stderr(log_err).spawn().map_err(|source| ProcError::Spawn {
            program: program.display().to_string(),
            source,
            hint: "build it first (`cargo build --release --bin wxauth`) or pass --wxauth-bin",
        })?;
    let pid = children.adopt("wxauth", child);
    let (grpc, public, admin) = addrs;
    let http = wxauth::http_client().build().map_err(|e| ProcError::NotReady(format!("HTTP client: {e}")))?;
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        if let Some(status) = children.exited(pid) {
            return Err(ProcError::NotReady(format!("wxauth exited at start-up ({status}); see {}", log.display())));
        }
        let ready = http.get(format!("http://{admin}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return Ok(Wxauth { pid, grpc, public, admin, log });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(ProcError::NotReady(format!("wxauth was not ready within 30 s; see {}", log.display())))
}

/// The ceiling server child: its addresses, its pid, and the pipe whose closing stops it.
#[derive(Debug)]
pub struct CeilingProcess {
    /// Its pid.
    pub pid: u32,
    /// The tonic ceiling.
    pub grpc: SocketAddr,
    /// The axum ceiling.
    pub http: SocketAddr,
    _stdin: Option<ChildStdin>,
}

/// Runs this very binary as `<exe> __ceiling <redis_url>` and reads the addresses it prints.
pub fn start_ceiling(children: &Children, redis_url: &str) -> Result<CeilingProcess, ProcError> {
    let exe = std::env::current_exe().map_err(|e| ProcError::NotReady(format!("cannot find own binary: {e}")))?;
    let mut child = Command::new(&exe)
        .args(["__ceiling", redis_url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| ProcError::Spawn {
            program: exe.display().to_string(),
            source,
            hint: "the bench binary re-runs itself for the ceiling server",
        })?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let pid = children.adopt("ceiling", child);
    let mut line = String::new();
    if let Some(stdout) = stdout {
        let _ = BufReader::new(stdout).read_line(&mut line);
    }
    let mut words = line.split_whitespace();
    let parsed = match (words.next(), words.next(), words.next()) {
        (Some("ceiling"), Some(grpc), Some(http)) => grpc.parse().ok().zip(http.parse().ok()),
        _ => None,
    };
    let (grpc, http) =
        parsed.ok_or_else(|| ProcError::NotReady(format!("the ceiling server did not start (said {line:?})")))?;
    Ok(CeilingProcess { pid, grpc, http, _stdin: stdin })
}

/// A process's resident memory, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: resident now, KiB.
    pub rss_kib: u64,
    /// `VmHWM`: the peak since start or since the last [`reset_peak`], KiB.
    pub peak_kib: u64,
}

/// Reads `VmRSS` and `VmHWM` of `pid`; `None` off Linux or when the process is gone.
pub fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(Memory { rss_kib: field("VmRSS:")?, peak_kib: field("VmHWM:")? })
}

/// Resets `VmHWM` of `pid` to its current RSS (`echo 5 > /proc/<pid>/clear_refs`, Linux ≥ 4.0,
/// same user), so the next [`memory`] gives the peak of one phase. False when not allowed.
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Clock ticks per second of `/proc/<pid>/stat`'s times: `USER_HZ`, which the kernel fixes at
/// 100 on every architecture the bench runs on (it is the ABI, whatever `CONFIG_HZ` is).
const USER_HZ: u64 = 100;

/// CPU time `pid` has used so far, all its threads, user and system, µs; `None` off Linux or
/// when the process is gone.
pub fn cpu_us(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`: comm may hold spaces and parentheses, so count from the
    // last `)`. utime and stime are fields 14 and 15, the 12th and 13th after it.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_ascii_whitespace().skip(11);
    let (utime, stime): (u64, u64) = (fields.next()?.parse().ok()?, fields.next()?.parse().ok()?);
    Some((utime + stime) * (1_000_000 / USER_HZ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_is_read_from_proc_and_grows_with_work() {
        let Some(before) = cpu_us(std::process::id()) else { return };
        // Spin until 30 ms of CPU are counted, however busy the machine (a wall-clock bound
        // would fail on a loaded one); a reading that does not grow ends the test at 10 s.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while after < before + 30_000 && started.elapsed() < std::time::Duration::from_secs(10) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            after = cpu_us(std::process::id()).expect("still here");
        }
        assert!(after >= before + 30_000, "CPU time read from /proc grows with work: {before} -> {after} µs");
        assert!(after < before + 60_000_000, "µs, not a larger unit: {before} -> {after}");
    }

    #[test]
    fn own_memory_is_read_from_proc() {
        let Some(mem) = memory(std::process::id()) else { return };
        assert!(mem.rss_kib > 0);
        assert!(mem.peak_kib >= mem.rss_kib);
    }
}
