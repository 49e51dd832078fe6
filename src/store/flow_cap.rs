//! The open-flow cap's arithmetic (`clients.<name>.max_open_flows`, [`super::Store::admit_flow`]):
//! per-window counters instead of one entry per flow, so each admission costs Redis the same
//! small, bounded work however many flows the client has open (docs/design.md §12.7).
//!
//! Time is cut into [`WINDOWS`] windows per `flow.ttl`, each `W = ceil(flow.ttl / WINDOWS)`
//! long (60 s at the default 10 min), numbered from the Unix epoch by the service clock. A
//! client has one counter per window, `{prefix}:client:{{client}}:flows:{window}`: the braces
//! are a Redis Cluster hash tag, so all of a client's counters share one slot and one pipeline
//! may touch them. An admission is one round trip without Lua: `INCR` the current window's
//! counter, `PEXPIRE` it for `(WINDOWS + 1) × W` (the longest it is read), `MGET` the
//! [`WINDOWS`] windows before it and the one after it. It is admitted when the sum is at most
//! the cap; otherwise its own count is taken back (`DECR`, a second round trip on refusals
//! only). The window after the current one is empty but for admissions racing this one across
//! a window's start (or from a replica whose clock is ahead): reading it means that of two
//! such admissions, at least the later one sees the other.
//!
//! **The bound.** A flow counts from its start to the end of the [`WINDOWS`]-th window after its
//! own: at least `WINDOWS × W ≥ flow.ttl`, at most `(WINDOWS + 1) × W` (11 min at the default).
//! So the flows a client started in any `flow.ttl` (its open flows) never exceed the cap, and a
//! client is refused only when it started at least `cap` flows in the last
//! `WINDOWS × W` plus the part of the current window gone by: a client starting flows at a
//! steady rate reaches the cap up to one window (1/11 of its count) earlier than an exact
//! count would. The retry delay is exact for the counters: when enough of the oldest windows
//! have left the range, at most one window after the oldest flow's `flow.ttl` ends. Every
//! `INCR` counts before its check, and of any admitted flows the one counted last reads all the
//! others' counts, so admissions racing across replicas can only be refused too early (while
//! another's refused count is not yet taken back), never let past the cap, as long as the
//! replicas' clocks agree to within a window.
//!
//! **Places counted ahead** ([`Leases`]). A client with a large cap would cost Redis a round
//! trip on every flow it starts; instead a replica counts a block of [`block`] places at once
//! (`INCRBY`, the same check for the whole block), hands the first to the flow that asked and
//! keeps the rest for the next flows of that client in the same window, which then start
//! without touching Redis. Every place is counted in Redis before it is handed out, so the cap
//! still holds across replicas; what a replica holds unused is counted too early, so a client
//! may be refused up to `replicas × (block − 1)` flows before its cap (the block is at most
//! 1/1000 of the cap and 64, and 1 below a cap of 2,000: small caps stay exact). A replica
//! gives back what it still holds of a window when it next counts for that client in a later
//! one. When the room left is smaller than the block, the block shrinks to the room.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::clock::millis;

/// Windows per `flow.ttl`: the cap's precision (a flow counts up to `1/WINDOWS` of
/// `flow.ttl` longer than it lives) against Redis work per admission (an `MGET` of this many
/// keys).
pub const WINDOWS: i64 = 10;

/// Whether a client may start one more flow ([`super::Store::admit_flow`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Counted in the current window. The slot names that window, to give the place back with
    /// [`super::Store::release_flow_slot`] when the flow is never written.
    Admitted(FlowSlot),
    /// Refused: the client started `cap` flows within the windows still counted.
    Refused {
        /// Until enough of the oldest windows leave the range for one more flow (at most one
        /// window after the oldest counted flow's `flow.ttl` ends).
        retry_after: Duration,
    },
}

/// One admitted flow's place under its client's cap: the window it was counted in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowSlot {
    window: Windows,
}

impl FlowSlot {
    /// The counter this flow was counted in, under the client's `base` key.
    pub(super) fn key(&self, base: &str) -> String {
        self.window.key(base, self.window.index)
    }

    /// How long a counter touched by a release must still live (the counter's own life).
    pub(super) fn life(&self) -> Duration {
        self.window.life()
    }
}

/// The window a moment falls in, for one `flow.ttl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Windows {
    /// Length of a window, ms (at least 1).
    length_ms: i64,
    /// The current window's number: service time in ms divided by the length.
    index: i64,
    /// The moment itself, ms on the service clock.
    now_ms: i64,
}

impl Windows {
    /// The windows of `ttl` at `now_ms` (service clock).
    pub(super) fn at(ttl: Duration, now_ms: i64) -> Self {
        let length_ms = window_ms(ttl);
        Self { length_ms, index: now_ms.div_euclid(length_ms), now_ms }
    }

    /// The current window's counter, and the others one admission reads: the [`WINDOWS`]
    /// before it (oldest first) and the one after it, all under the client's `base` key.
    pub(super) fn keys(&self, base: &str) -> (String, Vec<String>) {
        let others = (self.index - WINDOWS..self.index).chain([self.index + 1]).map(|i| self.key(base, i)).collect();
        (self.key(base, self.index), others)
    }

    /// The counter of window `index` under the client's `base` key.
    pub(super) fn key(&self, base: &str, index: i64) -> String {
        format!("{base}:{index}")
    }

    /// How long a counter must live after its last `INCR`: it is read until its window has
    /// [`WINDOWS`] windows after it.
    pub(super) fn life(&self) -> Duration {
        Duration::from_millis(u64::try_from((WINDOWS + 1).saturating_mul(self.length_ms)).unwrap_or(u64::MAX))
    }

    /// The verdict on the counts one admission of a single place read ([`Windows::judge_block`]
    /// with a block of 1).
    #[cfg(test)]
    pub(super) fn judge(&self, cap: u32, current: i64, others: &[i64]) -> Admission {
        self.judge_block(cap, 1, current, others).0
    }

    /// The verdict on the counts one admission of `asked` places read, and how many of them it
    /// may keep (0 when refused): `current`, the current window's count after this admission's
    /// `INCRBY asked`, and `others`, the windows [`Windows::keys`] names (the [`WINDOWS`] before
    /// it, oldest first, then the next one). Counts are floored (at 0, and at `asked` for the
    /// current window, which holds this admission): a counter only goes below after Redis lost
    /// it (evicted, flushed), and a negative count must not make room.
    pub(super) fn judge_block(&self, cap: u32, asked: i64, current: i64, others: &[i64]) -> (Admission, i64) {
        let cap = i64::from(cap);
        // Every window this admission read, oldest first, without the admission itself.
        let (earlier, next) = others.split_at(others.len().saturating_sub(1));
        let mut counts: Vec<i64> = earlier.iter().map(|&c| c.max(0)).collect();
        counts.push(current.max(asked) - asked);
        counts.extend(next.iter().map(|&c| c.max(0)));
        let mut counted: i64 = counts.iter().sum();
        if counted < cap {
            let granted = (cap - counted).min(asked);
            return (Admission::Admitted(FlowSlot { window: *self }), granted);
        }
        // The window `index - WINDOWS + j` (the j-th read) leaves the range when the window
        // `index + j + 1` begins; the oldest leave first, until there is room for one more.
        let mut leaves_at = self.index + WINDOWS + 2;
        for (j, count) in (0_i64..).zip(&counts) {
            counted -= count;
            if counted < cap {
                leaves_at = self.index + j + 1;
                break;
            }
        }
        let wait = leaves_at.saturating_mul(self.length_ms).saturating_sub(self.now_ms).max(1);
        (Admission::Refused { retry_after: Duration::from_millis(u64::try_from(wait).unwrap_or(1)) }, 0)
    }

    /// This window's number.
    pub(super) fn index(&self) -> i64 {
        self.index
    }

    /// The admission of a place a replica counted ahead in this window.
    pub(super) fn admitted(&self) -> Admission {
        Admission::Admitted(FlowSlot { window: *self })
    }
}

/// Places a replica counts at once for a client of cap `cap` ([`Leases`]): 1/1000 of the cap,
/// at least 1 and at most 64.
pub fn block(cap: u32) -> i64 {
    (i64::from(cap) / 1000).clamp(1, 64)
}

/// The places this replica counted ahead and has not handed out yet, per client: each of one
/// window, good only while that window lasts.
#[derive(Debug, Default)]
pub(super) struct Leases {
    held: Mutex<HashMap<String, Lease>>,
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    window: i64,
    left: i64,
}

/// Places counted in a window and no longer held: to be taken back from that window's counter.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Unused {
    pub window: i64,
    pub places: i64,
}

impl Leases {
    /// Takes one place `client` holds in `window`, if any.
    pub(super) fn take(&self, client: &str, window: i64) -> bool {
        let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match held.get_mut(client) {
            Some(lease) if lease.window == window && lease.left > 0 => {
                lease.left -= 1;
                true
            }
            _ => false,
        }
    }

    /// Keeps `left` places counted for `client` in `window`. Returns what must be given back:
    /// the places still held of an earlier window (replaced), or these places themselves when
    /// the client already holds places of a later window (this caller's clock lagged).
    pub(super) fn keep(&self, client: &str, window: i64, left: i64) -> Option<Unused> {
        let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(lease) = held.get_mut(client) else {
            held.insert(client.to_owned(), Lease { window, left });
            return None;
        };
        let unused = match lease.window.cmp(&window) {
            std::cmp::Ordering::Equal => {
                lease.left += left;
                return None;
            }
            std::cmp::Ordering::Greater => Unused { window, places: left },
            std::cmp::Ordering::Less => {
                let old = Unused { window: lease.window, places: lease.left };
                *lease = Lease { window, left };
                old
            }
        };
        (unused.places > 0).then_some(unused)
    }
}

/// Length of one window of the cap for a `flow.ttl` of `ttl`: `ceil(ttl / WINDOWS)`, ms (at
/// least 1).
pub fn window_ms(ttl: Duration) -> i64 {
    let ttl_ms = millis(ttl).max(1);
    ttl_ms.div_euclid(WINDOWS) + i64::from(ttl_ms.rem_euclid(WINDOWS) != 0)
}

#[cfg(test)]
mod tests;
