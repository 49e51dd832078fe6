//! `clients.<name>.rate_limits` and `max_open_flows` as configured: the RPC families, a rate's
//! shape and its parser, and each client's limits with their defaults (docs/design.md §6.2);
//! and `oidc.clients.<id>.rate_limits`, the provider's endpoints' families ([`OidcFamily`],
//! docs/design.md §6.2, docs/oidc.md), read by the same parser ([`rate_table`]).
//! Plain settings: the buckets that enforce them are [`crate::limits`]'s, built from these.

use std::num::NonZeroU32;
use std::time::Duration;

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

    /// The config key (`clients.<name>.rate_limits.<key>`) and metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Family::Authorize => "authorize",
            Family::Exchange => "exchange",
            Family::User => "user",
        }
    }

    /// The family's place in [`Family::ALL`] (and in [`ClientLimits::rates`]).
    pub(crate) fn index(self) -> usize {
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
    pub(crate) fn default_rate(self) -> Rate {
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
    pub(crate) fn parse(spec: &str, burst: Option<u32>) -> Result<Option<Rate>, String> {
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

    /// `"<count>/<unit>, burst <n>"`, for `wxauth check`.
    pub(crate) fn describe(self) -> String {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            _ => "h",
        };
        format!("{}/{unit}, burst {}", self.count, self.burst)
    }
}

/// The OpenID Provider's rate-limit families of one relying party
/// (`oidc.clients.<id>.rate_limits.<key>`), each its own bucket because different parties
/// can spend them (docs/design.md §6.2): anyone holding the public `client_id` can reach
/// `/oidc/authorize`; only the authenticated client reaches its `token` bucket; and failed
/// authentications at the token endpoint spend `token_auth_failures`, never `token`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OidcFamily {
    /// `/oidc/authorize` requests that would start a flow (valid ones, to a registered
    /// redirect URI): each is a flow, a pending request and an open-flow count in the store,
    /// and later at most one exchange of WeChat's code.
    Authorize,
    /// `/oidc/token` requests of the authenticated client.
    Token,
    /// Failed client authentications at `/oidc/token` (a wrong secret; for a public client a
    /// code that is not its own, or a wrong PKCE verifier).
    TokenAuthFailures,
}

impl OidcFamily {
    /// Every family, in config order.
    pub const ALL: [OidcFamily; 3] = [OidcFamily::Authorize, OidcFamily::Token, OidcFamily::TokenAuthFailures];

    /// The config key and metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            OidcFamily::Authorize => "authorize",
            OidcFamily::Token => "token",
            OidcFamily::TokenAuthFailures => "token_auth_failures",
        }
    }

    /// The family's place in [`OidcFamily::ALL`] (and in [`OidcLimits::rates`]).
    pub(crate) fn index(self) -> usize {
        match self {
            OidcFamily::Authorize => 0,
            OidcFamily::Token => 1,
            OidcFamily::TokenAuthFailures => 2,
        }
    }

    /// The default rate, per replica. `authorize` 20/s: over a flow's life (`flow.ttl`, 10 min)
    /// that is 12,000 flows per replica, so one party at the limit on up to four replicas
    /// stays under the default open-flow cap (50,000), and a company's sign-ins (72,000 an
    /// hour per replica) are far below it. `token` 20/s, as a gRPC client's `exchange`: one per
    /// sign-in. `token_auth_failures` 1/s with a burst of 10: a relying party with a wrong
    /// secret, retrying, gets ten answers and then one a second.
    pub(crate) fn default_rate(self) -> Rate {
        let (per_second, burst) = match self {
            OidcFamily::Authorize | OidcFamily::Token => (20, 20),
            OidcFamily::TokenAuthFailures => (1, 10),
        };
        let count = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        Rate { count, per: Duration::from_secs(1), burst: NonZeroU32::new(burst).unwrap_or(count) }
    }
}

/// One relying party's rate limits, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcLimits {
    /// The rate of each family ([`OidcFamily::ALL`] order); `None` is off.
    pub rates: [Option<Rate>; 3],
}

impl Default for OidcLimits {
    fn default() -> Self {
        Self { rates: OidcFamily::ALL.map(|f| Some(f.default_rate())) }
    }
}

/// A table of rates from its raw settings (`key` is `<...>.rate_limits`; each entry is a
/// family's name, its `"<count>/<unit>"` and its `_burst`): unset families keep `defaults`,
/// errors name the key at fault. The one reader of every `rate_limits` table.
pub(super) fn rate_table<const N: usize>(
    key: &str,
    raw: [(&str, Option<&str>, Option<u32>); N],
    defaults: [Option<Rate>; N],
) -> Result<[Option<Rate>; N], super::ConfigError> {
    let mut rates = defaults;
    for (slot, (name, spec, burst)) in rates.iter_mut().zip(raw) {
        *slot = match (spec, burst) {
            (Some(spec), burst) => Rate::parse(spec, burst).map_err(|message| {
                let at = if message.starts_with("burst") { format!("{name}_burst") } else { name.to_owned() };
                super::err(format!("{key}.{at}"), message)
            })?,
            (None, Some(_)) => {
                return Err(super::err(
                    format!("{key}.{name}_burst"),
                    format!("set only with `{name}` (a rate such as \"200/s\")"),
                ));
            }
            (None, None) => *slot,
        };
    }
    Ok(rates)
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
pub(crate) const DEFAULT_MAX_OPEN_FLOWS: u32 = 50_000;

/// The largest `max_open_flows` accepted.
pub(crate) const MAX_OPEN_FLOWS: u32 = 10_000_000;

impl Default for ClientLimits {
    fn default() -> Self {
        Self { rates: Family::ALL.map(|f| Some(f.default_rate())), max_open_flows: DEFAULT_MAX_OPEN_FLOWS }
    }
}

impl ClientLimits {
    /// The rate of one family (`None`: off).
    pub(crate) fn rate(&self, family: Family) -> Option<Rate> {
        self.rates[family.index()]
    }
}
