//! Per-client limits (docs/design.md §6.2): a token bucket per client
//! and RPC family, so one client cannot spend an app's WeChat quota (50,000 sns calls a minute)
//! for every other product, and the cap on a client's open flows (enforced by the store, see
//! [`crate::store::Store::admit_flow`]), so it cannot fill Redis with flows.
//!
//! The buckets are [`governor`]'s GCRA limiters, one per client × family, built once at
//! start-up ([`RateLimiters::new`]) and checked right after authentication, before any store or
//! WeChat work. They live in the process: each replica enforces its own copy of a limit, so a
//! limit is per replica (configure the cluster-wide budget divided by the replica count).
//!
//! Config: `clients.<name>.rate_limits.<family> = "<count>/<unit>"` (`"200/s"`, `"6000/min"`,
//! `"off"`) with an optional `<family>_burst` (default: one second's worth of the rate, at
//! least 1); `clients.<name>.max_open_flows`.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};

use crate::config::Client;
use crate::error::ApiError;
use crate::telemetry::Metrics;

/// The RPC families a client's rate limits are set for: each has its own bucket, because their
/// costs differ (a flow is a Redis write; an exchange is one or two WeChat calls; a user call is
/// a cache read or up to two WeChat calls).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// `BuildAuthorizeUrl`.
    Authorize,
    /// `ExchangeCode`.
    Exchange,
    /// `GetUserInfo`, `ValidateToken`, `RefreshToken`, `ForgetUser`.
    User,
}

impl Family {
    /// Every family, in config order.
    pub const ALL: [Family; 3] = [Family::Authorize, Family::Exchange, Family::User];

    /// The family of a gRPC method (its short name: `BuildAuthorizeUrl`). Every per-user RPC,
    /// and any method added later until it is given a family of its own, is `User`.
    pub fn of_method(method: &str) -> Self {
        match method {
            "BuildAuthorizeUrl" => Family::Authorize,
            "ExchangeCode" | "ExchangeMobileCode" | "SignInMiniProgram" => Family::Exchange,
            _ => Family::User,
        }
    }

    /// The config key (`clients.<name>.rate_limits.<key>`) and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Authorize => "authorize",
            Family::Exchange => "exchange",
            Family::User => "user",
        }
    }

    fn index(self) -> usize {
        match self {
            Family::Authorize => 0,
            Family::Exchange => 1,
            Family::User => 2,
        }
    }

    /// The default rate, per replica. Sized so that a product with real traffic is not
    /// throttled (per replica: 100 flows, 20 sign-ins and 100 user calls a second, the latter
    /// mostly profile-cache reads), while one runaway client on three replicas at every default
    /// at once makes about (20 × 2 + 100 × 1) × 3 = 420 WeChat calls a second: an exchange is
    /// up to two sns calls, a user call at most one once its user's token is fresh (refreshes are
    /// coalesced, once per token life). That is about half of an app's 50,000 a minute.
    pub fn default_rate(self) -> Rate {
        let per_second = match self {
            Family::Authorize => 100,
            Family::Exchange => 20,
            Family::User => 100,
        };
        let count = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        Rate { count, per: Duration::from_secs(1), burst: count }
    }
}

/// A token bucket's shape: `count` requests per `per` sustained, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed per `per`.
    pub count: NonZeroU32,
    /// The period `count` is over (1 s, 1 min or 1 h).
    pub per: Duration,
    /// The bucket's size: how many requests may come at once after a quiet spell.
    pub burst: NonZeroU32,
}

/// The largest count or burst accepted (far above anything a replica serves).
const MAX_COUNT: u32 = 1_000_000;

impl Rate {
    /// Parses `"<count>/<unit>"` (unit `s`, `sec`, `second`, `m`, `min`, `minute`, `h`,
    /// `hour`), or `"off"` (`None`). `burst` defaults to one second's worth of the rate (at
    /// least 1). Errors say what is wrong, for a message that names the key.
    pub fn parse(spec: &str, burst: Option<u32>) -> Result<Option<Rate>, String> {
        let spec = spec.trim();
        if spec.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let shape =
            || format!("`{spec}`: expected \"<count>/<unit>\" (\"200/s\", \"6000/min\", \"100000/h\") or \"off\"");
        let (count, unit) = spec.split_once('/').ok_or_else(shape)?;
        let count: u32 = count.trim().parse().map_err(|_| shape())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(shape()),
        };
        let count = NonZeroU32::new(count)
            .filter(|c| c.get() <= MAX_COUNT)
            .ok_or_else(|| format!("`{spec}`: the count must be 1..={MAX_COUNT} (\"off\" turns the limit off)"))?;
        let burst = match burst {
            Some(b) => NonZeroU32::new(b)
                .filter(|b| b.get() <= MAX_COUNT)
                .ok_or_else(|| format!("burst {b}: must be 1..={MAX_COUNT}"))?,
            None => {
                // One second's worth, rounded up.
                let per_second = u64::from(count.get()).div_ceil(per.as_secs());
                NonZeroU32::new(u32::try_from(per_second).unwrap_or(MAX_COUNT)).unwrap_or(NonZeroU32::MIN)
            }
        };
        Ok(Some(Rate { count, per, burst }))
    }

    /// governor's quota: one cell every `per / count`, `burst` cells at most.
    fn quota(self) -> Quota {
        let period = (self.per / self.count.get()).max(Duration::from_nanos(1));
        Quota::with_period(period).unwrap_or_else(|| Quota::per_second(self.count)).allow_burst(self.burst)
    }

    /// `"<count>/<unit>, burst <n>"`, for `wxauth check`.
    pub fn describe(self) -> String {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            _ => "h",
        };
        format!("{}/{unit}, burst {}", self.count, self.burst)
    }
}

/// One client's limits, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// The rate of each family ([`Family::ALL`] order); `None` is off.
    pub rates: [Option<Rate>; 3],
    /// How many flows the client may have open at once, across replicas.
    pub max_open_flows: u32,
}

/// The default `max_open_flows`: a flow lives `flow.ttl` (10 min), so 50,000 is about 83 sign-in
/// starts a second sustained for ten minutes, and caps what one client can put in Redis at
/// roughly 50 MB of flows.
pub const DEFAULT_MAX_OPEN_FLOWS: u32 = 50_000;

/// The largest `max_open_flows` accepted.
pub const MAX_OPEN_FLOWS: u32 = 10_000_000;

impl Default for ClientLimits {
    fn default() -> Self {
        Self { rates: Family::ALL.map(|f| Some(f.default_rate())), max_open_flows: DEFAULT_MAX_OPEN_FLOWS }
    }
}

impl ClientLimits {
    /// The rate of one family (`None`: off).
    pub fn rate(&self, family: Family) -> Option<Rate> {
        self.rates[family.index()]
    }
}

/// Every client's buckets, built once at start-up and shared by all requests.
pub struct RateLimiters {
    by_client: HashMap<String, [Option<DefaultDirectRateLimiter>; 3]>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for RateLimiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiters").field("clients", &self.by_client.len()).finish_non_exhaustive()
    }
}

impl RateLimiters {
    /// A full bucket for each limited family of each client.
    pub fn new(clients: &[Client], metrics: Arc<Metrics>) -> Self {
        let by_client = clients
            .iter()
            .map(|c| {
                (c.name.clone(), c.limits.rates.map(|rate| rate.map(|r| governor::RateLimiter::direct(r.quota()))))
            })
            .collect();
        Self { by_client, metrics }
    }

    /// Takes one request from the client's bucket for `method`'s family, or refuses with
    /// `CLIENT_RATE_LIMITED` and governor's wait time until the bucket has one again (counted
    /// in `wxauth_client_refusals_total`).
    pub fn check(&self, client: &Client, method: &str) -> Result<(), ApiError> {
        let family = Family::of_method(method);
        let Some(limiter) = self.by_client.get(&client.name).and_then(|l| l[family.index()].as_ref()) else {
            return Ok(());
        };
        limiter.check().map_err(|not_until| {
            let retry_after = not_until.wait_time_from(DefaultClock::default().now());
            let error = ApiError::ClientRateLimited { family: family.as_str(), retry_after };
            self.metrics.client_refusals.with_label_values(&[&client.name, family.as_str(), error.reason()]).inc();
            error
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).expect("non-zero")
    }

    #[test]
    fn rates_parse_with_a_default_burst_of_one_seconds_worth() {
        let cases = [
            ("200/s", 200, 1, 200),
            (" 6000 / min ", 6000, 60, 100),
            ("1/min", 1, 60, 1),
            ("100000/h", 100_000, 3600, 28),
            ("5/second", 5, 1, 5),
        ];
        for (spec, count, per, burst) in cases {
            let rate = Rate::parse(spec, None).expect(spec).expect("on");
            assert_eq!((rate.count, rate.per, rate.burst), (nz(count), Duration::from_secs(per), nz(burst)), "{spec}");
        }
    }

    #[test]
    fn an_explicit_burst_is_kept_and_off_is_none() {
        assert_eq!(Rate::parse("20/s", Some(500)).expect("valid").map(|r| r.burst), Some(nz(500)));
        assert_eq!(Rate::parse("off", Some(5)), Ok(None));
        assert_eq!(Rate::parse("OFF", None), Ok(None));
    }

    #[test]
    fn malformed_rates_are_refused_with_a_reason() {
        for spec in ["", "200", "200/d", "x/s", "-1/s", "0/s", "2000000/s", "200/s/s", "1.5/s"] {
            let error = Rate::parse(spec, None).expect_err(spec);
            assert!(!error.is_empty(), "{spec}");
        }
        assert!(Rate::parse("20/s", Some(0)).expect_err("zero burst").contains("burst"));
    }

    #[test]
    fn methods_map_to_their_family() {
        assert_eq!(Family::of_method("BuildAuthorizeUrl"), Family::Authorize);
        assert_eq!(Family::of_method("ExchangeCode"), Family::Exchange);
        for method in ["GetUserInfo", "ValidateToken", "RefreshToken", "ForgetUser"] {
            assert_eq!(Family::of_method(method), Family::User, "{method}");
        }
    }

    #[test]
    fn a_bucket_refuses_past_its_burst_and_says_how_long_to_wait() {
        let rate = Rate::parse("1/min", Some(2)).expect("valid").expect("on");
        let limiter = governor::RateLimiter::direct(rate.quota());
        assert!(limiter.check().is_ok() && limiter.check().is_ok());
        let wait = limiter.check().expect_err("over the burst").wait_time_from(DefaultClock::default().now());
        assert!(wait > Duration::from_secs(50) && wait <= Duration::from_secs(60), "{wait:?}");
    }

    #[test]
    fn defaults_limit_every_family() {
        let limits = ClientLimits::default();
        assert_eq!(limits.rate(Family::Exchange).map(|r| r.describe()), Some("20/s, burst 20".to_owned()));
        assert!(Family::ALL.iter().all(|f| limits.rate(*f).is_some()));
        assert_eq!(limits.max_open_flows, DEFAULT_MAX_OPEN_FLOWS);
    }
}
