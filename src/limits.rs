//! Per-client limits (docs/design.md §6.2): a token bucket per client
//! and RPC family, so one client cannot spend an app's WeChat quota (50,000 sns calls a minute)
//! for every other product, and the cap on a client's open flows (enforced by the store, see
//! [`crate::store::Store::admit_flow`]), so it cannot fill Redis with flows.
//!
//! The buckets are [`governor`]'s GCRA limiters, one per client × family, built once at
//! start-up (`RateLimiters::new`) and checked right after authentication, before any store or
//! WeChat work. They live in the process: each replica enforces its own copy of a limit, so a
//! limit is per replica (configure the cluster-wide budget divided by the replica count).
//!
//! Config: `clients.<name>.rate_limits.<family> = "<count>/<unit>"` (`"200/s"`, `"6000/min"`,
//! `"off"`) with an optional `<family>_burst` (default: one second's worth of the rate, at
//! least 1); `clients.<name>.max_open_flows`. Those settings, their parser and defaults are
//! [`crate::config`]'s ([`Family`], [`Rate`], [`crate::config::ClientLimits`]); this module
//! only builds and checks the buckets, and depends on config, never the other way.
//!
//! The OpenID Provider's relying parties have buckets of the same kind ([`OidcLimiters`]: one
//! per party × [`OidcFamily`], `oidc.clients.<id>.rate_limits`), charged where the provider's
//! endpoints say (src/oidc/; who may spend which bucket is docs/design.md §6.2's).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};

use crate::config::{Client, Family, OidcClient, OidcFamily, Rate};
use crate::error::ApiError;
use crate::telemetry::Metrics;

/// The family of a gRPC method (its short name: `BuildAuthorizeUrl`). Every per-user RPC, and
/// any method added later until it is given a family of its own, is `User`.
pub(crate) fn family_of_method(method: &str) -> Family {
    match method {
        "BuildAuthorizeUrl" => Family::Authorize,
        "ExchangeCode" | "ExchangeMobileCode" | "SignInMiniProgram" => Family::Exchange,
        _ => Family::User,
    }
}

/// governor's quota for a configured rate: one cell every `per / count`, `burst` cells at most.
fn quota(rate: Rate) -> Quota {
    let period = (rate.per / rate.count.get()).max(Duration::from_nanos(1));
    Quota::with_period(period).unwrap_or_else(|| Quota::per_second(rate.count)).allow_burst(rate.burst)
}

/// A full bucket of `rate`.
fn bucket(rate: Rate) -> DefaultDirectRateLimiter {
    governor::RateLimiter::direct(quota(rate))
}

/// Takes one request from `bucket`, or answers how long until it has one again.
fn take(bucket: &DefaultDirectRateLimiter) -> Result<(), Duration> {
    bucket.check().map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
}

/// Each client's buckets by its name, one per family of its kind (gRPC or provider), built once
/// at start-up: the one lookup both kinds of limiter make.
struct Buckets(HashMap<String, [Option<DefaultDirectRateLimiter>; 3]>);

impl Buckets {
    fn new<'a>(clients: impl Iterator<Item = (&'a str, [Option<Rate>; 3])>) -> Self {
        Self(clients.map(|(name, rates)| (name.to_owned(), rates.map(|rate| rate.map(bucket)))).collect())
    }

    /// Takes one request from `name`'s bucket `index` (none: not limited), or answers how long
    /// until it has one again.
    fn take(&self, name: &str, index: usize) -> Result<(), Duration> {
        self.0.get(name).and_then(|l| l[index].as_ref()).map_or(Ok(()), take)
    }
}

/// Every client's buckets, built once at start-up and shared by all requests.
pub(crate) struct RateLimiters {
    buckets: Buckets,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for RateLimiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiters").field("clients", &self.buckets.0.len()).finish_non_exhaustive()
    }
}

impl RateLimiters {
    /// A full bucket for each limited family of each client.
    pub(crate) fn new(clients: &[Client], metrics: Arc<Metrics>) -> Self {
        Self { buckets: Buckets::new(clients.iter().map(|c| (c.name.as_str(), c.limits.rates))), metrics }
    }

    /// Takes one request from the client's bucket for `method`'s family, or refuses with
    /// `CLIENT_RATE_LIMITED` and governor's wait time until the bucket has one again (counted
    /// in `wxauth_client_refusals_total`).
    pub(crate) fn check(&self, client: &Client, method: &str) -> Result<(), ApiError> {
        let family = family_of_method(method);
        self.buckets.take(&client.name, family.index()).map_err(|retry_after| {
            let error = ApiError::ClientRateLimited { family: family.as_str(), retry_after };
            self.metrics.client_refusals.with_label_values(&[&client.name, family.as_str(), error.reason()]).inc();
            error
        })
    }
}

/// Every relying party's buckets at the provider's endpoints, built once at start-up.
pub(crate) struct OidcLimiters {
    buckets: Buckets,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for OidcLimiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcLimiters").field("clients", &self.buckets.0.len()).finish_non_exhaustive()
    }
}

/// The reason label of a refusal by a bucket, the gRPC limiter's (`CLIENT_RATE_LIMITED`).
const RATE_LIMITED: &str = "CLIENT_RATE_LIMITED";

impl OidcLimiters {
    /// A full bucket for each limited family of each relying party.
    pub(crate) fn new(clients: &[OidcClient], metrics: Arc<Metrics>) -> Self {
        Self { buckets: Buckets::new(clients.iter().map(|c| (c.id.as_str(), c.limits.rates))), metrics }
    }

    /// Takes one request from the party's `family` bucket, or answers how long until it has
    /// one again (counted in `wxauth_client_refusals_total` under the client `oidc:<id>`, the
    /// name its flows are kept under, so it never meets a gRPC client's).
    pub(crate) fn check(&self, client: &OidcClient, family: OidcFamily) -> Result<(), Duration> {
        self.buckets.take(&client.id, family.index()).inspect_err(|_| {
            self.metrics.client_refusals.with_label_values(&[&client.caller(), family.as_str(), RATE_LIMITED]).inc();
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_map_to_their_family() {
        assert_eq!(family_of_method("BuildAuthorizeUrl"), Family::Authorize);
        assert_eq!(family_of_method("ExchangeCode"), Family::Exchange);
        for method in ["GetUserInfo", "ValidateToken", "RefreshToken", "ForgetUser"] {
            assert_eq!(family_of_method(method), Family::User, "{method}");
        }
    }

    #[test]
    fn a_bucket_refuses_past_its_burst_and_says_how_long_to_wait() {
        let rate = Rate::parse("1/min", Some(2)).expect("valid").expect("on");
        let limiter = bucket(rate);
        assert!(take(&limiter).is_ok() && take(&limiter).is_ok());
        let wait = take(&limiter).expect_err("over the burst");
        assert!(wait > Duration::from_secs(50) && wait <= Duration::from_secs(60), "{wait:?}");
    }
}
