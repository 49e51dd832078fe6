//! `[oidc]`: the OpenID Provider face (src/oidc/, docs/oidc.md): its signing keys (RSA for
//! RS256 and, optionally, EC P-256 for ES256; each the current one and the previous one, with
//! its `kid`), the lives of its codes and access tokens, and its clients
//! (`[oidc.clients.<id>]`), the relying parties beside the gRPC clients.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::rates::rate_table;
use super::raw::{RawOidc, RawOidcClient};
use super::{Apps, ConfigError, OidcFamily, OidcLimits, Settings, Users, err, is_name};
use crate::oidc::{Alg, SigningKey};

/// The scopes the provider offers: `openid` (required of every request) and `profile` (the
/// WeChat nickname and avatar as `name` and `picture`).
pub const OIDC_SCOPES: [&str; 2] = ["openid", "profile"];

/// The longest life of the provider's own codes (the issue's bound; RFC 6749 §4.1.2 advises
/// at most ten minutes).
const MAX_CODE_TTL: Duration = Duration::from_secs(60);

/// The validated `[oidc]` section.
#[derive(Debug)]
pub struct OidcSettings {
    /// The issuer: the callback URL's origin (`https://auth.example.com`), no trailing slash.
    pub issuer: String,
    /// The RSA key that signs RS256 ID tokens now.
    pub signing_key: SigningKey,
    /// The RSA key that signed them before the last rotation: still in the JWKS, so that ID
    /// tokens it signed keep verifying.
    pub previous_key: Option<SigningKey>,
    /// The EC P-256 key that signs ES256 ID tokens now (clients registered with
    /// `id_token_signed_response_alg = "ES256"`), when one is configured.
    pub es256_key: Option<SigningKey>,
    /// The EC key before the last rotation of the ES256 key.
    pub previous_es256_key: Option<SigningKey>,
    /// How long one of the provider's codes may wait for its token request (≤ 60 s).
    pub code_ttl: Duration,
    /// How long an access token (for `/oidc/userinfo`) and an ID token live.
    pub access_token_ttl: Duration,
    /// The relying parties.
    pub clients: Vec<OidcClient>,
}

impl OidcSettings {
    /// The client of `id`.
    pub fn client(&self, id: &str) -> Option<&OidcClient> {
        self.clients.iter().find(|c| c.id == id)
    }

    /// The key that signs `alg` now (always one for RS256; for ES256 when configured, which
    /// every client registered for ES256 is checked for).
    pub fn signer(&self, alg: Alg) -> Option<&SigningKey> {
        match alg {
            Alg::Rs256 => Some(&self.signing_key),
            Alg::Es256 => self.es256_key.as_ref(),
        }
    }

    /// Every key the JWKS publishes: the RSA key, the previous RSA key, the EC key, the previous
    /// EC key (those configured, in that order).
    pub fn keys(&self) -> impl Iterator<Item = &SigningKey> {
        std::iter::once(&self.signing_key)
            .chain(&self.previous_key)
            .chain(&self.es256_key)
            .chain(&self.previous_es256_key)
    }
}

/// One relying party (`[oidc.clients.<id>]`).
#[derive(Debug)]
pub struct OidcClient {
    /// Its `client_id`.
    pub id: String,
    /// Its redirect URIs, matched exactly (as the URL parser writes them).
    pub redirect_uris: Vec<String>,
    /// Where the end-session endpoint may send its browser back to.
    pub post_logout_redirect_uris: Vec<String>,
    /// How it authenticates at the token endpoint.
    pub auth: ClientAuth,
    /// The WeChat apps it signs in with (an official account, a website app, or both).
    pub apps: Vec<String>,
    /// The scopes it may be granted.
    pub scopes: BTreeSet<String>,
    /// Whether its authorization requests must carry a PKCE S256 challenge (always for
    /// `auth_method = "none"`).
    pub require_pkce: bool,
    /// What its `sub` is.
    pub subject: Subject,
    /// Whether its ID tokens and userinfo carry WeChat's `openid` and `unionid` as claims.
    pub wechat_ids: bool,
    /// Its open-flow cap (as a gRPC client's `max_open_flows`).
    pub max_open_flows: u32,
    /// The algorithm of its ID tokens (`id_token_signed_response_alg`, OpenID Connect Dynamic
    /// Client Registration §2): RS256 by default.
    pub id_token_alg: Alg,
    /// Its rate limits at the provider's endpoints (`rate_limits`, docs/design.md §6.2).
    pub limits: OidcLimits,
}

impl OidcClient {
    /// The name its flows and its claims on users are kept under: never a gRPC client's
    /// (those names have no `:`).
    pub fn caller(&self) -> String {
        format!("oidc:{}", self.id)
    }
}

/// A client's token endpoint authentication (OpenID Connect Core §9).
#[derive(Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic; the SHA-256 of its secret.
    SecretBasic([u8; 32]),
    /// `client_secret_post`: in the form body; the SHA-256 of its secret.
    SecretPost([u8; 32]),
    /// `none`: a public client, which must use PKCE.
    None,
}

impl ClientAuth {
    /// The method's registered name.
    pub fn method(&self) -> &'static str {
        match self {
            ClientAuth::SecretBasic(_) => "client_secret_basic",
            ClientAuth::SecretPost(_) => "client_secret_post",
            ClientAuth::None => "none",
        }
    }
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.method())
    }
}

/// What a client's `sub` is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// Pairwise (OpenID Connect Core §8.1): a hash of the sector, the app and the openid, so
    /// that two clients of different sectors cannot correlate a user. The default.
    Pairwise {
        /// The sector (`sector`, by default the client id).
        sector: String,
    },
    /// The user's unionid (one subject across the company's apps), for clients configured so.
    Unionid,
}

/// Validates `[oidc]`: keys (the dev key only in development, where it is the default),
/// lives, clients.
pub(super) fn validate(
    raw: Option<RawOidc>,
    apps: &Apps,
    callback_url: &Url,
    dev: bool,
) -> Result<Option<std::sync::Arc<OidcSettings>>, ConfigError> {
    let Some(mut raw) = raw else { return Ok(None) };
    let keys = signing_keys(&mut raw, dev)?;
    if raw.code_ttl.is_zero() || raw.code_ttl > MAX_CODE_TTL {
        return Err(err("oidc.code_ttl", "between 1s and 60s"));
    }
    if raw.access_token_ttl < Duration::from_secs(60) || raw.access_token_ttl > Duration::from_secs(3600) {
        return Err(err("oidc.access_token_ttl", "between 1m and 1h"));
    }
    let clients = raw
        .clients
        .into_iter()
        .map(|(id, client)| validate_client(id, client, apps, dev))
        .collect::<Result<Vec<_>, _>>()?;
    if clients.is_empty() {
        return Err(err("oidc.clients", "at least one client"));
    }
    if keys.es256_key.is_none()
        && let Some(client) = clients.iter().find(|c| c.id_token_alg == Alg::Es256)
    {
        return Err(err(
            format!("oidc.clients.{}.id_token_signed_response_alg", client.id),
            "ES256 needs an EC P-256 key (`oidc.es256_signing_key_file` and `es256_signing_key_id`)",
        ));
    }
    let issuer = callback_url.origin().ascii_serialization();
    let Keys { signing_key, previous_key, es256_key, previous_es256_key } = keys;
    Ok(Some(std::sync::Arc::new(OidcSettings {
        issuer,
        signing_key,
        previous_key,
        es256_key,
        previous_es256_key,
        code_ttl: raw.code_ttl,
        access_token_ttl: raw.access_token_ttl,
        clients,
    })))
}

/// The validated keys of `[oidc]`.
struct Keys {
    signing_key: SigningKey,
    previous_key: Option<SigningKey>,
    es256_key: Option<SigningKey>,
    previous_es256_key: Option<SigningKey>,
}

/// The RSA keys (the current one required: RS256 is OpenID Connect Core §15.1's mandatory
/// algorithm) and the optional EC keys, each kid used once (a relying party picks the key by
/// it). In development the dev keys are the defaults of the current ones (the EC one only
/// beside the dev RSA key).
fn signing_keys(raw: &mut RawOidc, dev: bool) -> Result<Keys, ConfigError> {
    let fields = |id: &mut Option<String>, pem: &mut Option<String>, file: &mut Option<PathBuf>| KeyFields {
        id: id.take(),
        pem: pem.take(),
        file: file.take(),
    };
    // The dev EC key joins only the dev RSA key (`cargo run`'s key set): a development config
    // that names its own keys gets no key it did not name.
    let dev_keys = dev && raw.signing_key.is_none() && raw.signing_key_file.is_none();
    let current = fields(&mut raw.signing_key_id, &mut raw.signing_key, &mut raw.signing_key_file);
    let signing_key = key("oidc.signing_key", Alg::Rs256, current, dev, dev)?;
    let signing_key = signing_key.ok_or_else(|| err("oidc.signing_key", "required (`signing_key_file`)"))?;
    let previous =
        fields(&mut raw.previous_signing_key_id, &mut raw.previous_signing_key, &mut raw.previous_signing_key_file);
    let previous_key = key("oidc.previous_signing_key", Alg::Rs256, previous, dev, false)?;
    let es256 = fields(&mut raw.es256_signing_key_id, &mut raw.es256_signing_key, &mut raw.es256_signing_key_file);
    let es256_key = key("oidc.es256_signing_key", Alg::Es256, es256, dev, dev_keys)?;
    let previous_es256 = fields(
        &mut raw.previous_es256_signing_key_id,
        &mut raw.previous_es256_signing_key,
        &mut raw.previous_es256_signing_key_file,
    );
    let previous_es256_key = key("oidc.previous_es256_signing_key", Alg::Es256, previous_es256, dev, false)?;
    if previous_es256_key.is_some() && es256_key.is_none() {
        return Err(err("oidc.es256_signing_key", "required with `previous_es256_signing_key` (the key after it)"));
    }
    let keys = Keys { signing_key, previous_key, es256_key, previous_es256_key };
    let named = [
        ("oidc.signing_key_id", Some(&keys.signing_key)),
        ("oidc.previous_signing_key_id", keys.previous_key.as_ref()),
        ("oidc.es256_signing_key_id", keys.es256_key.as_ref()),
        ("oidc.previous_es256_signing_key_id", keys.previous_es256_key.as_ref()),
    ];
    for (i, (field, key)) in named.iter().enumerate() {
        let Some(key) = key else { continue };
        if let Some((earlier, _)) = named[..i].iter().find(|(_, k)| k.is_some_and(|k| k.kid() == key.kid())) {
            return Err(err(*field, format!("must differ from {}", earlier.trim_start_matches("oidc."))));
        }
    }
    Ok(keys)
}

/// A key's three settings: `<field>_id`, `<field>` (PEM, from env) and `<field>_file`.
struct KeyFields {
    id: Option<String>,
    pem: Option<String>,
    file: Option<PathBuf>,
}

/// A signing key for `alg` from `<field>` or `<field>_file`, named by `<field>_id`. None when
/// none is set (or the dev key, when `dev_default`: the current keys in development).
/// Production refuses the dev keys.
fn key(
    field: &str,
    alg: Alg,
    fields: KeyFields,
    dev: bool,
    dev_default: bool,
) -> Result<Option<SigningKey>, ConfigError> {
    let KeyFields { id: kid, pem: inline, file } = fields;
    let pem = match (inline, file) {
        (None, None) if dev_default => return dev_key(field, alg),
        (None, None) => {
            return match kid {
                Some(_) => Err(err(field, "an id without a key (`_file`)")),
                None => Ok(None),
            };
        }
        (Some(pem), None) => pem,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map_err(|e| err(format!("{field}_file"), format!("cannot read {}: {}", path.display(), e.kind())))?,
        (Some(_), Some(_)) => return Err(err(field, "set the key or its `_file`, not both")),
    };
    let kid = kid.ok_or_else(|| err(format!("{field}_id"), "required with the key (its JWK `kid`)"))?;
    if kid.is_empty() || kid.len() > 64 || !kid.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return Err(err(format!("{field}_id"), "1..64 of [A-Za-z0-9._-]"));
    }
    let key = SigningKey::from_pem_for(alg, &kid, &pem).map_err(|message| err(field, message))?;
    if !dev && key.is_dev_key() {
        return Err(err(field, "is the dev-mode key; production refuses it"));
    }
    Ok(Some(key))
}

#[cfg(feature = "dev")]
fn dev_key(field: &str, alg: Alg) -> Result<Option<SigningKey>, ConfigError> {
    SigningKey::dev_for(alg).map(Some).map_err(|message| err(field, message))
}

/// Without the dev keys, the RSA key is required and the EC key optional.
#[cfg(not(feature = "dev"))]
fn dev_key(field: &str, alg: Alg) -> Result<Option<SigningKey>, ConfigError> {
    match alg {
        Alg::Rs256 => Err(err(field, "required (`signing_key_file`)")),
        Alg::Es256 => Ok(None),
    }
}

fn validate_client(id: String, raw: RawOidcClient, apps: &Apps, dev: bool) -> Result<OidcClient, ConfigError> {
    let key = format!("oidc.clients.{id}");
    if !is_name(&id) {
        return Err(err(key, "client ids are 1..64 of [a-z0-9_-]"));
    }
    if raw.redirect_uris.is_empty() {
        return Err(err(format!("{key}.redirect_uris"), "at least one"));
    }
    for uri in raw.redirect_uris.iter().chain(&raw.post_logout_redirect_uris) {
        check_redirect_uri(uri, dev).map_err(|message| err(format!("{key}.redirect_uris"), message))?;
    }
    let auth = auth(&key, &raw)?;
    if auth == ClientAuth::None && !raw.require_pkce {
        return Err(err(format!("{key}.require_pkce"), "a public client (`auth_method = \"none\"`) must use PKCE"));
    }
    check_apps(&key, &raw.apps, apps)?;
    let scopes: BTreeSet<String> = raw.scopes.into_iter().collect();
    if let Some(unknown) = scopes.iter().find(|s| !OIDC_SCOPES.contains(&s.as_str())) {
        return Err(err(format!("{key}.scopes"), format!("`{unknown}` is not one of {OIDC_SCOPES:?}")));
    }
    if !scopes.contains("openid") {
        return Err(err(format!("{key}.scopes"), "must include `openid`"));
    }
    if raw.users != Users::Own {
        // The provider signs in and reads only the user of the client's own sign-in.
        return Err(err(format!("{key}.users"), "an OIDC client reaches only its own users (`own`)"));
    }
    let subject = match (raw.subject.as_deref(), raw.sector) {
        (None | Some("pairwise"), sector) => Subject::Pairwise { sector: sector.unwrap_or_else(|| id.clone()) },
        (Some("unionid"), None) => Subject::Unionid,
        (Some("unionid"), Some(_)) => return Err(err(format!("{key}.sector"), "only with `subject = \"pairwise\"`")),
        (Some(_), _) => return Err(err(format!("{key}.subject"), "`pairwise` (the default) or `unionid`")),
    };
    if !(1..=super::rates::MAX_OPEN_FLOWS).contains(&raw.max_open_flows) {
        return Err(err(format!("{key}.max_open_flows"), format!("between 1 and {}", super::rates::MAX_OPEN_FLOWS)));
    }
    let id_token_alg = match raw.id_token_signed_response_alg.as_deref() {
        None => Alg::Rs256,
        Some(name) => Alg::parse(name)
            .ok_or_else(|| err(format!("{key}.id_token_signed_response_alg"), "`RS256` (the default) or `ES256`"))?,
    };
    let table = OidcFamily::ALL.map(|family| {
        let (spec, burst) = raw.rate_limits.get(family);
        (family.as_str(), spec, burst)
    });
    let limits = OidcLimits { rates: rate_table(&format!("{key}.rate_limits"), table, OidcLimits::default().rates)? };
    Ok(OidcClient {
        id,
        redirect_uris: raw.redirect_uris,
        post_logout_redirect_uris: raw.post_logout_redirect_uris,
        auth,
        apps: raw.apps,
        scopes,
        require_pkce: raw.require_pkce,
        subject,
        wechat_ids: raw.wechat_ids,
        max_open_flows: raw.max_open_flows,
        id_token_alg,
        limits,
    })
}

/// `auth_method` and `secret_sha256`: a secret's hash with the secret methods, none without.
fn auth(key: &str, raw: &RawOidcClient) -> Result<ClientAuth, ConfigError> {
    let digest = || {
        let hex = raw.secret_sha256.as_deref().ok_or_else(|| err(format!("{key}.secret_sha256"), "required"))?;
        hex::decode(hex.trim())
            .ok()
            .and_then(|d| <[u8; 32]>::try_from(d).ok())
            .ok_or_else(|| err(format!("{key}.secret_sha256"), "64 hex digits (sha256 of the client secret)"))
    };
    match raw.auth_method.as_str() {
        "client_secret_basic" => Ok(ClientAuth::SecretBasic(digest()?)),
        "client_secret_post" => Ok(ClientAuth::SecretPost(digest()?)),
        "none" if raw.secret_sha256.is_some() => {
            Err(err(format!("{key}.secret_sha256"), "a public client (`none`) has no secret"))
        }
        "none" => Ok(ClientAuth::None),
        _ => Err(err(format!("{key}.auth_method"), "`client_secret_basic`, `client_secret_post` or `none`")),
    }
}

/// The client's apps: known, and with an authorize page (official accounts, website apps).
fn check_apps(key: &str, names: &[String], apps: &Apps) -> Result<(), ConfigError> {
    if names.is_empty() {
        return Err(err(format!("{key}.apps"), "at least one app"));
    }
    for name in names {
        let app = apps.by_name.get(name).ok_or_else(|| err(format!("{key}.apps"), format!("no app named `{name}`")))?;
        if !app.kind.has_authorize_page() {
            return Err(err(format!("{key}.apps"), format!("`{name}` has no authorize page (a browser sign-in)")));
        }
    }
    Ok(())
}

/// A redirect URI the provider may send a browser to: absolute https (http only to loopback,
/// or in development), no userinfo or fragment, at most 2 KiB, written as the URL parser writes
/// it (so that the exact match is on what the browser is sent to).
fn check_redirect_uri(uri: &str, dev: bool) -> Result<(), String> {
    let url = Url::parse(uri).map_err(|e| format!("`{uri}`: {e}"))?;
    let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    match url.scheme() {
        "https" => {}
        "http" if loopback || dev => {}
        _ => return Err(format!("`{uri}`: https (http only to loopback)")),
    }
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() || uri.len() > 2048 {
        return Err(format!("`{uri}`: no userinfo or fragment, at most 2048 bytes"));
    }
    if url.as_str() != uri {
        return Err(format!("`{uri}`: write it as `{}`", url.as_str()));
    }
    Ok(())
}

impl Settings {
    /// The `[oidc]` section for `wxauth check`: no key or secret hash.
    pub(super) fn oidc_summary(&self) -> serde_json::Value {
        let Some(oidc) = &self.oidc else { return serde_json::Value::Null };
        let clients: BTreeMap<&str, serde_json::Value> = oidc
            .clients
            .iter()
            .map(|c| {
                let subject = match &c.subject {
                    Subject::Pairwise { sector } => format!("pairwise ({sector})"),
                    Subject::Unionid => "unionid".to_owned(),
                };
                let summary = serde_json::json!({
                    "redirect_uris": c.redirect_uris, "post_logout_redirect_uris": c.post_logout_redirect_uris,
                    "auth_method": c.auth.method(), "apps": c.apps, "scopes": c.scopes,
                    "require_pkce": c.require_pkce, "subject": subject, "wechat_ids": c.wechat_ids,
                    "id_token_signed_response_alg": c.id_token_alg.name(),
                    "rate_limits": OidcFamily::ALL.map(|f| {
                        let rate = c.limits.rates[f.index()];
                        format!("{}: {}", f.as_str(), rate.map_or_else(|| "off".to_owned(), |r| r.describe()))
                    }),
                });
                (c.id.as_str(), summary)
            })
            .collect();
        let humane = |d: Duration| humantime_serde::re::humantime::format_duration(d).to_string();
        serde_json::json!({
            "issuer": oidc.issuer,
            "signing_key_id": oidc.signing_key.kid(),
            "previous_signing_key_id": oidc.previous_key.as_ref().map(SigningKey::kid),
            "es256_signing_key_id": oidc.es256_key.as_ref().map(SigningKey::kid),
            "previous_es256_signing_key_id": oidc.previous_es256_key.as_ref().map(SigningKey::kid),
            "code_ttl": humane(oidc.code_ttl),
            "access_token_ttl": humane(oidc.access_token_ttl),
            "clients": clients,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rate;
    use crate::store::seal::Keyring;

    const SECRET_HASH: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

    fn key_file(name: &str) -> String {
        format!("{}/tests/fixtures/oidc/{name}.pem", env!("CARGO_MANIFEST_DIR"))
    }

    /// A production config with an `[oidc]` section of `oidc` (its client `grafana` first).
    fn config(oidc: &str) -> String {
        format!(
            r#"
[server]
callback_url = "https://auth.example.com/wechat/callback"
[store]
url = "redis://redis:6379/0"
sealing_keys = "{keys}"
[apps.mp]
kind = "official_account"
appid = "wx0123456789abcdef"
secret = "s3cret"
[apps.mini]
kind = "mini_program"
appid = "wx0123456789abcdee"
secret = "s3cret"
[clients.passport]
key_sha256 = "{SECRET_HASH}"
apps = ["mp"]
return_urls = ["https://passport.example.com/login/"]
[oidc]
signing_key_id = "k2"
signing_key_file = "{current}"
{oidc}
"#,
            keys = Keyring::generate_line(1),
            current = key_file("current"),
        )
    }

    fn grafana(extra: &str) -> String {
        format!(
            "[oidc.clients.grafana]\nredirect_uris = [\"https://grafana.example.com/login/generic_oauth\"]\n\
             auth_method = \"client_secret_basic\"\nsecret_sha256 = \"{SECRET_HASH}\"\napps = [\"mp\"]\n{extra}"
        )
    }

    fn refused(toml: &str) -> ConfigError {
        Settings::from_toml(toml).map(|_| ()).expect_err("invalid")
    }

    #[test]
    fn a_client_validates_with_its_defaults_and_the_summary_shows_no_secret() {
        let settings = Settings::from_toml(&config(&grafana(""))).expect("valid");
        let oidc = settings.oidc.as_deref().expect("oidc");
        assert_eq!(oidc.issuer, "https://auth.example.com");
        assert_eq!((oidc.code_ttl, oidc.access_token_ttl), (Duration::from_secs(60), Duration::from_secs(600)));
        let client = oidc.client("grafana").expect("client");
        assert!(client.require_pkce);
        assert_eq!(client.subject, Subject::Pairwise { sector: "grafana".into() });
        assert_eq!(client.scopes.iter().map(String::as_str).collect::<Vec<_>>(), ["openid", "profile"]);
        let summary = settings.summary().to_string();
        assert!(summary.contains("client_secret_basic") && summary.contains("\"signing_key_id\":\"k2\""));
        assert!(!summary.contains(SECRET_HASH), "no secret hash: {summary}");
        assert_eq!(client.limits, OidcLimits::default());
        assert!(summary.contains("token_auth_failures: 1/s, burst 10"), "{summary}");
        assert!(!format!("{settings:?}").contains("PRIVATE KEY"), "Debug shows no key");
    }

    #[test]
    fn each_mistake_names_its_key() {
        let cases = [
            (grafana("").replace("https://grafana", "http://grafana"), "oidc.clients.grafana.redirect_uris"),
            (grafana("").replace("generic_oauth\"", "generic_oauth#x\""), "oidc.clients.grafana.redirect_uris"),
            (
                grafana("").replace("https://grafana.example.com/", "https://GRAFANA.example.com/"),
                "oidc.clients.grafana.redirect_uris",
            ),
            (grafana("").replace("client_secret_basic", "private_key_jwt"), "oidc.clients.grafana.auth_method"),
            (
                grafana("").replace(&format!("secret_sha256 = \"{SECRET_HASH}\""), ""),
                "oidc.clients.grafana.secret_sha256",
            ),
            (grafana("").replace("client_secret_basic", "none"), "oidc.clients.grafana.secret_sha256"),
            (grafana("").replace("[\"mp\"]", "[\"mini\"]"), "oidc.clients.grafana.apps"),
            (grafana("").replace("[\"mp\"]", "[\"nope\"]"), "oidc.clients.grafana.apps"),
            (grafana("scopes = [\"profile\"]"), "oidc.clients.grafana.scopes"),
            (grafana("scopes = [\"openid\", \"email\"]"), "oidc.clients.grafana.scopes"),
            (grafana("users = \"app\""), "oidc.clients.grafana.users"),
            (grafana("subject = \"public\""), "oidc.clients.grafana.subject"),
            (grafana("[oidc.clients.grafana.rate_limits]\ntoken = \"fast\""), "oidc.clients.grafana.rate_limits.token"),
            (
                grafana("[oidc.clients.grafana.rate_limits]\nauthorize = \"5/s\"\nauthorize_burst = 0"),
                "oidc.clients.grafana.rate_limits.authorize_burst",
            ),
            (
                grafana("[oidc.clients.grafana.rate_limits]\ntoken_auth_failures_burst = 3"),
                "oidc.clients.grafana.rate_limits.token_auth_failures_burst",
            ),
        ];
        for (oidc, key) in &cases {
            assert_eq!(refused(&config(oidc)).key, *key, "{oidc}");
        }
        let public = "[oidc.clients.spa]\nredirect_uris = [\"http://localhost:3000/cb\"]\nauth_method = \"none\"\n\
                      apps = [\"mp\"]\nrequire_pkce = false\n";
        assert_eq!(refused(&config(public)).key, "oidc.clients.spa.require_pkce", "a public client must use PKCE");
        let long = config(&grafana("")).replace("[oidc]\n", "[oidc]\ncode_ttl = \"61s\"\n");
        assert_eq!(refused(&long).key, "oidc.code_ttl");
        assert_eq!(refused(&config("")).key, "oidc.clients");
    }

    #[test]
    fn rate_limits_are_read_as_a_grpc_clients_are() {
        let limits = "[oidc.clients.grafana.rate_limits]\nauthorize = \"off\"\ntoken = \"6/min\"\ntoken_burst = 2\n";
        let settings = Settings::from_toml(&config(&grafana(limits))).expect("valid");
        let client = settings.oidc.as_deref().and_then(|o| o.client("grafana")).expect("client");
        let token = Rate::parse("6/min", Some(2)).expect("valid");
        assert_eq!(client.limits.rates, [None, token, Some(OidcFamily::TokenAuthFailures.default_rate())]);
        let unknown = grafana("[oidc.clients.grafana.rate_limits]\nexchange = \"5/s\"\n");
        assert!(refused(&config(&unknown)).message.contains("exchange"), "an unknown family is refused");
    }

    #[test]
    fn production_refuses_the_dev_key_and_a_key_without_an_id() {
        let dev_key = config(&grafana("")).replace(&key_file("current"), "src/oidc/dev-signing-key.pem");
        let dev_key = dev_key.replace("src/oidc/", &format!("{}/src/oidc/", env!("CARGO_MANIFEST_DIR")));
        let error = refused(&dev_key);
        assert_eq!(error.key, "oidc.signing_key");
        assert!(error.message.contains("dev-mode key"), "{error}");
        assert_eq!(refused(&config(&grafana("")).replace("signing_key_id = \"k2\"\n", "")).key, "oidc.signing_key_id");
        let same_kid = config(&grafana("")).replace(
            "[oidc]\n",
            &format!(
                "[oidc]\nprevious_signing_key_id = \"k2\"\nprevious_signing_key_file = \"{}\"\n",
                key_file("previous")
            ),
        );
        assert_eq!(refused(&same_kid).key, "oidc.previous_signing_key_id");
    }

    /// `[oidc]`'s EC key lines: `es256_signing_key_*` of the fixture `ec-current`, kid `e1`.
    fn ec_key() -> String {
        format!("es256_signing_key_id = \"e1\"\nes256_signing_key_file = \"{}\"\n", key_file("ec-current"))
    }

    #[test]
    fn an_es256_client_signs_with_the_ec_key_which_only_the_summary_names() {
        let toml = config(&grafana("id_token_signed_response_alg = \"ES256\""))
            .replace("[oidc]\n", &format!("[oidc]\n{}", ec_key()));
        let settings = Settings::from_toml(&toml).expect("valid");
        let oidc = settings.oidc.as_deref().expect("oidc");
        assert_eq!(oidc.client("grafana").expect("client").id_token_alg, Alg::Es256);
        let signer = oidc.signer(Alg::Es256).expect("an EC key");
        assert_eq!((signer.kid(), signer.alg()), ("e1", Alg::Es256));
        assert_eq!(oidc.keys().map(SigningKey::kid).collect::<Vec<_>>(), ["k2", "e1"]);
        let summary = settings.summary().to_string();
        assert!(summary.contains("\"es256_signing_key_id\":\"e1\""), "{summary}");
        assert!(summary.contains("\"id_token_signed_response_alg\":\"ES256\""), "{summary}");
        assert!(!format!("{settings:?}").contains("PRIVATE KEY"), "Debug shows no key");
        // Without the field, RS256; and production has no EC key unless given one.
        let plain = Settings::from_toml(&config(&grafana(""))).expect("valid");
        let plain = plain.oidc.as_deref().expect("oidc");
        assert_eq!(plain.client("grafana").expect("client").id_token_alg, Alg::Rs256);
        assert!(plain.signer(Alg::Es256).is_none());
    }

    #[test]
    fn each_es256_mistake_names_its_key() {
        let with_ec = |oidc: &str, keys: &str| config(oidc).replace("[oidc]\n", &format!("[oidc]\n{keys}"));
        let es256 = grafana("id_token_signed_response_alg = \"ES256\"");
        let no_ec_key = refused(&with_ec(&es256, ""));
        assert_eq!(no_ec_key.key, "oidc.clients.grafana.id_token_signed_response_alg");
        assert!(no_ec_key.message.contains("es256_signing_key_file"), "{no_ec_key}");
        let hs256 = grafana("id_token_signed_response_alg = \"HS256\"");
        assert_eq!(refused(&with_ec(&hs256, &ec_key())).key, "oidc.clients.grafana.id_token_signed_response_alg");
        let rsa_as_ec = ec_key().replace(&key_file("ec-current"), &key_file("current"));
        let error = refused(&with_ec(&grafana(""), &rsa_as_ec));
        assert_eq!(error.key, "oidc.es256_signing_key");
        assert!(!error.message.contains("PRIVATE KEY-----"), "no key material: {error}");
        let same_kid = ec_key().replace("\"e1\"", "\"k2\"");
        assert_eq!(refused(&with_ec(&grafana(""), &same_kid)).key, "oidc.es256_signing_key_id");
        let previous_only = format!(
            "previous_es256_signing_key_id = \"e0\"\nprevious_es256_signing_key_file = \"{}\"\n",
            key_file("ec-previous")
        );
        assert_eq!(refused(&with_ec(&grafana(""), &previous_only)).key, "oidc.es256_signing_key");
        let dev_ec = ec_key()
            .replace(&key_file("ec-current"), &format!("{}/src/oidc/dev-es256-key.pem", env!("CARGO_MANIFEST_DIR")));
        let error = refused(&with_ec(&grafana(""), &dev_ec));
        assert_eq!(error.key, "oidc.es256_signing_key");
        assert!(error.message.contains("dev-mode key"), "{error}");
    }
}
