//! `[clients.<name>]`: the callers of the gRPC API, each with its key's digest, its apps, its
//! return-URL allowlist, which users it reaches, its limits and what app-level credentials it
//! may use ([`Grant`]: off by default).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::rates::{MAX_OPEN_FLOWS, rate_table};
use super::raw::{RawClient, RawRateLimits};
use super::{Apps, ClientLimits, ConfigError, DEV_CLIENT_KEY, Family, err, is_name, key_digest};
use crate::allowlist::Allowlist;
use crate::wechat::AppKind;

/// A caller of the gRPC API.
#[derive(Debug)]
pub struct Client {
    /// Its config name.
    pub name: String,
    /// SHA-256 of its key.
    pub key_sha256: [u8; 32],
    /// Apps it may use.
    pub apps: BTreeSet<String>,
    /// Where it may send codes.
    pub allowlist: Allowlist,
    /// Which users it may reach.
    pub users: Users,
    /// Its rate limits and open-flow cap.
    pub limits: ClientLimits,
    /// The app-level RPCs it may call (`grants`; none by default).
    pub grants: BTreeSet<Grant>,
}

impl Client {
    /// Whether the client holds `grant`.
    pub fn holds(&self, grant: Grant) -> bool {
        self.grants.contains(&grant)
    }
}

/// A permission to use an app's own credentials through wxauth (`clients.<name>.grants`): the
/// appsecret stays with wxauth, and only the clients granted one may ask for what it buys.
/// None is held by default: a sign-in client never reaches the app's access token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Grant {
    /// `GetAppAccessToken` and `InvalidateAppAccessToken` (official accounts, mini programs).
    AppAccessToken,
    /// `SignJsSdkConfig` (official accounts).
    Jssdk,
    /// `GetPhoneNumber` (mini programs).
    PhoneNumber,
    /// `DecryptMiniProgramData` (mini programs).
    MiniData,
    /// `FindAccounts` by a phone number kept with GetPhoneNumber's `keep` (mini programs): a
    /// person looked up by phone, which no sign-in client needs.
    PhoneLookup,
}

impl Grant {
    /// Every grant, in config order.
    pub const ALL: [Grant; 5] =
        [Grant::AppAccessToken, Grant::Jssdk, Grant::PhoneNumber, Grant::MiniData, Grant::PhoneLookup];

    /// The grant's name in config (`grants = ["app_access_token", ...]`) and in errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::AppAccessToken => "app_access_token",
            Grant::Jssdk => "jssdk",
            Grant::PhoneNumber => "phone_number",
            Grant::MiniData => "mini_data",
            Grant::PhoneLookup => "phone_lookup",
        }
    }

    /// The app kinds the grant is of use with (config refuses a grant none of the client's
    /// apps can use: a typo's likely sign; the RPC refuses an app of another kind).
    pub fn kinds(self) -> &'static [AppKind] {
        match self {
            Grant::AppAccessToken => &[AppKind::OfficialAccount, AppKind::MiniProgram],
            Grant::Jssdk => &[AppKind::OfficialAccount],
            Grant::PhoneNumber | Grant::MiniData | Grant::PhoneLookup => &[AppKind::MiniProgram],
        }
    }
}

/// Which users of its apps a client may reach with the per-user RPCs (GetUserInfo,
/// ValidateToken, RefreshToken, ForgetUser, FindAccounts), and what it reads of them
/// (`crate::consent`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Users {
    /// Only users for whom this client exchanged a code itself; any other openid answers as an
    /// unknown user does (no oracle). It reads only what its own sign-ins were granted, and its
    /// ForgetUser forgets the user for itself. The default: one product cannot read another's
    /// users, nor what another product's consent gave.
    #[default]
    Own,
    /// Every user of the client's apps (a trusted back office, an account service), read as
    /// the token allows; its ForgetUser forgets the user for every client of the app.
    App,
}

/// Validates `[clients.<name>]` against the apps: names, unique key digests (never the dev-mode
/// demo key in production), known apps, return-URL patterns, limits; at least one client.
pub(super) fn validate(raw: BTreeMap<String, RawClient>, apps: &Apps, dev: bool) -> Result<Vec<Client>, ConfigError> {
    let mut clients = Vec::new();
    for (name, client) in raw {
        let key = format!("clients.{name}");
        if !is_name(&name) {
            return Err(err(key, "client names are 1..64 of [a-z0-9_-]"));
        }
        let digest: [u8; 32] = hex::decode(client.key_sha256.trim())
            .ok()
            .and_then(|d| d.try_into().ok())
            .ok_or_else(|| err(format!("{key}.key_sha256"), "64 hex digits (sha256 of the client key)"))?;
        if !dev && digest == key_digest(DEV_CLIENT_KEY) {
            return Err(err(format!("{key}.key_sha256"), "is the dev-mode demo key; production refuses it"));
        }
        if clients.iter().any(|c: &Client| c.key_sha256 == digest) {
            return Err(err(format!("{key}.key_sha256"), "another client has the same key"));
        }
        if let Some(unknown) = client.apps.iter().find(|a| !apps.by_name.contains_key(*a)) {
            return Err(err(format!("{key}.apps"), format!("no app named `{unknown}`")));
        }
        if client.return_urls.is_empty() {
            return Err(err(format!("{key}.return_urls"), "at least one pattern"));
        }
        let allowlist =
            Allowlist::parse(&client.return_urls).map_err(|e| err(format!("{key}.return_urls"), e.to_string()))?;
        let limits = client_limits(&key, &client.rate_limits, client.max_open_flows)?;
        let grants = client_grants(&key, &client.grants, &client.apps, apps)?;
        let apps = client.apps.into_iter().collect();
        clients.push(Client { name, key_sha256: digest, apps, allowlist, users: client.users, limits, grants });
    }
    if clients.is_empty() {
        return Err(err("clients", "at least one client"));
    }
    Ok(clients)
}

/// A client's grants from `clients.<name>.grants` (`key` is `clients.<name>`): known names,
/// each usable with at least one of the client's apps.
fn client_grants(
    key: &str,
    raw: &[String],
    client_apps: &[String],
    apps: &Apps,
) -> Result<BTreeSet<Grant>, ConfigError> {
    let mut grants = BTreeSet::new();
    for name in raw {
        let grant = Grant::ALL.into_iter().find(|g| g.as_str() == name).ok_or_else(|| {
            let known: Vec<_> = Grant::ALL.iter().map(|g| g.as_str()).collect();
            err(format!("{key}.grants"), format!("no grant named `{name}` (known: {})", known.join(", ")))
        })?;
        let usable = client_apps.iter().filter_map(|a| apps.by_name.get(a)).any(|a| grant.kinds().contains(&a.kind));
        if !usable {
            let kinds: Vec<_> = grant.kinds().iter().map(|k| k.as_str()).collect();
            return Err(err(
                format!("{key}.grants"),
                format!("`{name}` needs one of the client's apps to be of kind {}", kinds.join(" or ")),
            ));
        }
        grants.insert(grant);
    }
    Ok(grants)
}

/// A client's limits from `clients.<name>.rate_limits` and `max_open_flows` (`key` is
/// `clients.<name>`): unset families take their default, errors name the key at fault.
fn client_limits(key: &str, raw: &RawRateLimits, max_open_flows: u32) -> Result<ClientLimits, ConfigError> {
    let mut limits = ClientLimits::default();
    let table = Family::ALL.map(|family| {
        let (spec, burst) = raw.get(family);
        (family.as_str(), spec, burst)
    });
    limits.rates = rate_table(&format!("{key}.rate_limits"), table, limits.rates)?;
    if !(1..=MAX_OPEN_FLOWS).contains(&max_open_flows) {
        return Err(err(format!("{key}.max_open_flows"), format!("between 1 and {MAX_OPEN_FLOWS}")));
    }
    limits.max_open_flows = max_open_flows;
    Ok(limits)
}
