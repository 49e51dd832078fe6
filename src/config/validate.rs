//! From the file's shape to [`Settings`]: each section validated by its own room, in the
//! order the file reads (the first error stops start-up, naming its key), then `[flow]` and
//! `[token]`, whose few bounds live here.

use std::time::Duration;

use super::raw::{RawConfig, RawFlow, RawToken};
use super::{ConfigError, FlowSettings, LogSettings, Mode, Settings, apps, clients, err, oidc, server, store};
use crate::tokens::TokenPolicy;

/// Validates every section; the first error found is the one reported.
pub(super) fn validate(raw: RawConfig) -> Result<Settings, ConfigError> {
    let dev = raw.mode == Mode::Development;
    let server = server::validate(&raw.server, dev)?;
    let store = store::validate(raw.store, dev)?;
    let wechat = apps::validate_wechat(&raw.wechat, dev)?;
    let apps = apps::validate(raw.apps, server.callback_url.path())?;
    let clients = clients::validate(raw.clients, &apps, dev)?;
    let flow = flow(&raw.flow)?;
    let token = token(&raw.token)?;
    let oidc = oidc::validate(raw.oidc, &apps, &server.callback_url, dev)?;
    Ok(Settings {
        mode: raw.mode,
        server,
        store,
        wechat,
        apps,
        clients,
        flow,
        token,
        log: LogSettings { json: raw.log.json },
        oidc,
    })
}

/// `[flow]`: a flow waits 1 min to 1 h for its callback; its grace is shorter.
fn flow(raw: &RawFlow) -> Result<FlowSettings, ConfigError> {
    let (ttl, grace) = (raw.ttl, raw.grace);
    if ttl < Duration::from_secs(60) || ttl > Duration::from_secs(3600) {
        return Err(err("flow.ttl", "between 1m and 1h"));
    }
    if grace.is_zero() || grace > Duration::from_secs(600) || grace >= ttl {
        return Err(err("flow.grace", "between 1ms and 10m, and shorter than flow.ttl"));
    }
    Ok(FlowSettings { ttl, grace })
}

/// `[token]`: the refresh margin, a refresh token's life, the profile cache's age and how many
/// user events each client's feed keeps.
fn token(raw: &RawToken) -> Result<TokenPolicy, ConfigError> {
    if raw.refresh_margin > Duration::from_secs(3600) {
        return Err(err("token.refresh_margin", "at most 1h (access tokens live 2h)"));
    }
    if raw.refresh_life < Duration::from_secs(3600) {
        return Err(err("token.refresh_life", "at least 1h"));
    }
    if raw.profile_cache > Duration::from_secs(24 * 3600) {
        return Err(err("token.profile_cache", "at most 24h (0s turns the cache off)"));
    }
    if !(1..=1_000_000).contains(&raw.user_events_kept) {
        return Err(err("token.user_events_kept", "1..=1000000"));
    }
    Ok(TokenPolicy {
        refresh_margin: raw.refresh_margin,
        refresh_life: raw.refresh_life,
        profile_cache: raw.profile_cache,
        user_events_kept: raw.user_events_kept,
    })
}
