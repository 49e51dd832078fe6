//! WeChat's message push (消息推送) on the callback domain, for the authorization events
//! (授权用户资料变更, docs/design.md §2.6): `user_authorization_revoke` and
//! `user_authorization_cancellation` forget the user for the app and every client;
//! `user_info_modified` drops the cached profile. Each app with `[apps.<name>.push]` has one
//! path on the public listener, as configured on WeChat's console with its Token and
//! EncodingAESKey.
//!
//! - `GET` is the console's URL check: `signature`, `timestamp`, `nonce`, `echostr`; a good
//!   signature gets `echostr` back.
//! - `POST` is a message. Its `signature` (and in the safe mode `msg_signature`, with the
//!   `Encrypt` text) must match and its `timestamp` be within [`WINDOW`] of the service clock;
//!   the safe mode's ciphertext must decrypt to a message for the app's own appid. Refused
//!   with a plain 4xx and nothing changed: a bad signature, a stale timestamp, a message
//!   that is not one, an event for an app wxauth does not know, and an event whose
//!   `(timestamp, nonce)` was seen already (remembered in the store for twice [`WINDOW`]).
//! - An official account has **one** push URL, which the company's own message handler
//!   (menus, replies, subscribe events) usually has already. Every message that is not an
//!   authorization event goes to that handler (`forward_to`) exactly as it came — the same
//!   query string and body, so the handler's own signature check and decryption still work
//!   — and the handler's answer goes back to WeChat within `forward_timeout` (WeChat waits
//!   5 s). A company that would rather keep its handler at the URL has it pass the request on
//!   to this path unchanged instead: wxauth checks the signature itself either way.
//!
//! Files: `crypto.rs` (signatures, the safe mode's decryption), `message.rs` (XML and JSON
//! fields), this one (the routes, the checks, the acts, the forward).

mod crypto;
mod message;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub use self::crypto::{DecryptError, Decrypted, aes_key, decrypt, signature, signature_matches};
pub use self::message::{Fields, ParseError, UserEvent, parse};
use crate::allowlist::form_pairs;
use crate::clock::Clock;
use crate::config::{PushSettings, Settings};
use crate::store::{Store, UserEventRecord};
use crate::telemetry::Metrics;
use crate::tokens::Tokens;
use crate::wechat::App;

/// How far a message's `timestamp` may be from the service clock, either way. WeChat sends
/// a message at once and retries within seconds; a captured request replayed later is refused.
pub const WINDOW: Duration = Duration::from_secs(300);

/// The largest body accepted: WeChat's messages are a few kilobytes.
const MAX_BODY: usize = 64 * 1024;

/// The largest query string accepted (`signature`, `timestamp`, `nonce`, `openid`,
/// `encrypt_type`, `msg_signature`: a few hundred bytes).
const MAX_QUERY: usize = 4096;

/// What WeChat's push needs: the endpoints by path, the apps by appid, the clients of each app,
/// and the parts that act on a user.
#[derive(Clone)]
pub struct PushService {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: HashMap<String, Endpoint>,
    apps: HashMap<String, App>,
    clients: BTreeMap<String, Vec<String>>,
    /// How many events each client's feed keeps (`token.user_events_kept`).
    events_kept: u64,
    tokens: Arc<Tokens>,
    store: Store,
    clock: Clock,
    metrics: Arc<Metrics>,
    http: reqwest::Client,
}

impl std::fmt::Debug for PushService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let paths: Vec<&String> = self.inner.endpoints.keys().collect();
        f.debug_struct("PushService").field("paths", &paths).finish_non_exhaustive()
    }
}

/// One app's push endpoint, its key decoded once.
struct Endpoint {
    settings: PushSettings,
    appid: String,
    key: Option<[u8; 32]>,
}

impl PushService {
    /// The push endpoints of `settings`' apps (none: an empty router).
    pub fn new(
        settings: &Settings,
        tokens: Arc<Tokens>,
        store: Store,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Result<Self, reqwest::Error> {
        let by_name = &settings.apps.by_name;
        let endpoints = settings
            .apps
            .push
            .iter()
            .filter_map(|push| {
                let app = by_name.get(&push.app)?;
                let key = push.aes_key.as_ref().and_then(|k| aes_key(k.secret()));
                Some((push.path.clone(), Endpoint { settings: push.clone(), appid: app.appid.clone(), key }))
            })
            .collect();
        let apps = by_name.values().map(|app| (app.appid.clone(), app.clone())).collect();
        let clients = by_name
            .keys()
            .map(|app| {
                let of_app = settings.clients.iter().filter(|c| c.apps.contains(app)).map(|c| c.name.clone());
                (app.clone(), of_app.collect())
            })
            .collect();
        // The handler is the company's own: no redirects followed, no retries (WeChat retries).
        let http = crate::http_client().redirect(reqwest::redirect::Policy::none()).build()?;
        let events_kept = settings.token.user_events_kept;
        let inner = Inner { endpoints, apps, clients, events_kept, tokens, store, clock, metrics, http };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// One route per configured push path, `GET` (the URL check) and `POST` (messages).
    pub fn router(&self) -> Router {
        let mut router = Router::new();
        for path in self.inner.endpoints.keys() {
            router = router.route(path, get(verify).post(receive));
        }
        router.with_state(self.clone())
    }

    fn endpoint(&self, path: &str) -> Result<&Endpoint, Refusal> {
        self.inner.endpoints.get(path).ok_or(Refusal::UnknownApp)
    }

    fn count(&self, app: &str, outcome: &str) {
        self.inner.metrics.push_messages.with_label_values(&[app, outcome]).inc();
    }
}

/// Why a push is refused: a plain 4xx (or 503 when the store is down), nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A query or body that is not WeChat's.
    Malformed,
    /// `signature` or `msg_signature` does not match.
    BadSignature,
    /// `timestamp` further than [`WINDOW`] from now.
    Stale,
    /// A plaintext message to an app configured for the safe mode (its body is not signed).
    NotEncrypted,
    /// An encrypted message to an app without an EncodingAESKey.
    NoKey,
    /// A ciphertext that does not decrypt, or decrypts for another appid.
    Undecryptable,
    /// A path or an event's `AppID` that names no configured app.
    UnknownApp,
    /// A `(timestamp, nonce)` seen already.
    Replayed,
    /// The store did not answer; WeChat retries.
    StoreDown,
    /// The act failed for another reason (logged).
    Failed,
}

impl Refusal {
    fn outcome(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::BadSignature => "bad_signature",
            Refusal::Stale => "stale_timestamp",
            Refusal::NotEncrypted => "not_encrypted",
            Refusal::NoKey => "no_key",
            Refusal::Undecryptable => "undecryptable",
            Refusal::UnknownApp => "unknown_app",
            Refusal::Replayed => "replayed",
            Refusal::StoreDown => "store_unavailable",
            Refusal::Failed => "failed",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Refusal::Malformed | Refusal::NotEncrypted | Refusal::NoKey | Refusal::Undecryptable => {
                StatusCode::BAD_REQUEST
            }
            Refusal::BadSignature | Refusal::Stale => StatusCode::FORBIDDEN,
            Refusal::UnknownApp => StatusCode::NOT_FOUND,
            Refusal::Replayed => StatusCode::CONFLICT,
            Refusal::StoreDown => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Failed => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A plain-text answer naming the refusal and nothing from the request.
    fn response(self) -> Response {
        (self.status(), [(header::CACHE_CONTROL, "no-store")], format!("refused: {}\n", self.outcome())).into_response()
    }
}

/// The signed query of a push: `signature`, `timestamp`, `nonce`, and the safe mode's
/// `encrypt_type` and `msg_signature` (and `echostr` of the URL check).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Signed {
    pub(crate) signature: String,
    pub(crate) timestamp: String,
    pub(crate) nonce: String,
    pub(crate) encrypted: bool,
    pub(crate) msg_signature: Option<String>,
    pub(crate) echostr: Option<String>,
}

/// Reads the query; a repeated or missing parameter, or an oversized query, is malformed.
pub(crate) fn parse_query(query: &str) -> Result<Signed, Refusal> {
    if query.len() > MAX_QUERY {
        return Err(Refusal::Malformed);
    }
    let (mut signature, mut timestamp, mut nonce, mut encrypt_type, mut msg_signature, mut echostr) =
        (None, None, None, None, None, None);
    for (name, value) in form_pairs(query) {
        let slot = match name.as_ref() {
            "signature" => &mut signature,
            "timestamp" => &mut timestamp,
            "nonce" => &mut nonce,
            "encrypt_type" => &mut encrypt_type,
            "msg_signature" => &mut msg_signature,
            "echostr" => &mut echostr,
            _ => continue,
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(Refusal::Malformed);
        }
    }
    let encrypted = match encrypt_type.as_deref() {
        None | Some("raw") => false,
        Some("aes") => true,
        Some(_) => return Err(Refusal::Malformed),
    };
    let timestamp = timestamp.filter(|t| (1..=12).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit()));
    let nonce = nonce.filter(|n| (1..=64).contains(&n.len()));
    Ok(Signed {
        signature: signature.ok_or(Refusal::Malformed)?,
        timestamp: timestamp.ok_or(Refusal::Malformed)?,
        nonce: nonce.ok_or(Refusal::Malformed)?,
        encrypted,
        msg_signature,
        echostr,
    })
}

impl PushService {
    /// The query's `signature` under the endpoint's Token, and its `timestamp` within [`WINDOW`].
    fn check(&self, endpoint: &Endpoint, query: &str) -> Result<Signed, Refusal> {
        let signed = parse_query(query)?;
        let token = endpoint.settings.token.secret();
        if !signature_matches(&signed.signature, &[token, &signed.timestamp, &signed.nonce]) {
            return Err(Refusal::BadSignature);
        }
        let at: i64 = signed.timestamp.parse().map_err(|_| Refusal::Malformed)?;
        if (self.inner.clock.now_secs() - at).unsigned_abs() > WINDOW.as_secs() {
            return Err(Refusal::Stale);
        }
        Ok(signed)
    }

    /// The message's plaintext: the body itself (plaintext mode), or the `Encrypt` text of its
    /// envelope, its `msg_signature` checked, decrypted, and meant for the endpoint's appid.
    fn open(&self, endpoint: &Endpoint, signed: &Signed, body: &[u8]) -> Result<Vec<u8>, Refusal> {
        let Some(key) = &endpoint.key else {
            return if signed.encrypted { Err(Refusal::NoKey) } else { Ok(body.to_vec()) };
        };
        if !signed.encrypted {
            return Err(Refusal::NotEncrypted);
        }
        let envelope = parse(body).map_err(|_| Refusal::Malformed)?;
        let encrypt = envelope.encrypt.ok_or(Refusal::Malformed)?;
        let msg_signature = signed.msg_signature.as_deref().ok_or(Refusal::Malformed)?;
        let token = endpoint.settings.token.secret();
        if !signature_matches(msg_signature, &[token, &signed.timestamp, &signed.nonce, &encrypt]) {
            return Err(Refusal::BadSignature);
        }
        let decrypted = decrypt(key, &encrypt).map_err(|_| Refusal::Undecryptable)?;
        if decrypted.appid != endpoint.appid {
            return Err(Refusal::Undecryptable);
        }
        Ok(decrypted.message)
    }

    /// [`Self::act`] in a task of its own: WeChat drops the connection after 5 s, and a forget
    /// waiting on a user's refresh lock may take longer; cut short, it would leave the nonce
    /// claimed and the user remembered, and WeChat's retry refused as a replay.
    async fn act_detached(
        &self,
        endpoint: &Endpoint,
        signed: Signed,
        fields: Fields,
        event: UserEvent,
    ) -> Result<(), Refusal> {
        let (push, path) = (self.clone(), endpoint.settings.path.clone());
        let task = tokio::spawn(async move {
            let endpoint = push.endpoint(&path)?;
            push.act(endpoint, &signed, &fields, event).await
        });
        task.await.unwrap_or(Err(Refusal::Failed))
    }

    /// Acts on an authorization event: the app it names, the user, once per
    /// `(timestamp, nonce)`. A failure forgets the nonce again, so WeChat's retry is heard.
    async fn act(
        &self,
        endpoint: &Endpoint,
        signed: &Signed,
        fields: &Fields,
        event: UserEvent,
    ) -> Result<(), Refusal> {
        let app = fields.app_id.as_deref().and_then(|id| self.inner.apps.get(id)).ok_or(Refusal::UnknownApp)?;
        // An event may name another app (a website app has no push URL of its own), but never
        // one with an endpoint of its own: one app's Token must not forget another's users.
        let own_endpoint = |name: &str| self.inner.endpoints.values().any(|e| e.settings.app == name);
        if app.name != endpoint.settings.app && own_endpoint(&app.name) {
            return Err(Refusal::UnknownApp);
        }
        let openid = fields.open_id.as_deref().filter(|o| is_openid(o)).ok_or(Refusal::Malformed)?;
        let (store, name) = (&self.inner.store, endpoint.settings.app.as_str());
        let (timestamp, nonce) = (signed.timestamp.as_str(), signed.nonce.as_str());
        if !store.claim_push_nonce(name, timestamp, nonce, WINDOW * 2).await.map_err(|_| Refusal::StoreDown)? {
            return Err(Refusal::Replayed);
        }
        let wechat_time = fields.create_time.as_deref().and_then(|t| t.parse().ok()).unwrap_or(0);
        if let Err(refusal) = self.forget(app, openid, event, wechat_time).await {
            if let Err(error) = store.release_push_nonce(name, timestamp, nonce).await {
                tracing::warn!(%error, "push nonce kept after a failed act; WeChat's retry will be refused");
            }
            return Err(refusal);
        }
        self.inner.metrics.user_events.with_label_values(&[app.name.as_str(), event.as_str()]).inc();
        // No openid in the log: the metric and the app say enough, the user is gone.
        tracing::info!(app = %app.name, event = event.as_str(), "WeChat pushed an authorization event; acted on it");
        Ok(())
    }

    /// Revoked or cancelled: the user's records for the app and every client's claim, as an
    /// app-wide ForgetUser (docs/design.md §12.5). Modified: the cached profiles. Either way
    /// the clients that had signed the user in (held a claim) get the event in their feeds,
    /// and no other client: nothing one product was given reaches another (§2.6).
    async fn forget(&self, app: &App, openid: &str, event: UserEvent, wechat_time: i64) -> Result<(), Refusal> {
        let store = &self.inner.store;
        let failed = |error: crate::error::ApiError| {
            tracing::warn!(app = %app.name, %error, "acting on a pushed authorization event failed");
            if matches!(error, crate::error::ApiError::StoreUnavailable) { Refusal::StoreDown } else { Refusal::Failed }
        };
        let clients = self.inner.clients.get(&app.name).map(Vec::as_slice).unwrap_or_default();
        let clients: Vec<&str> = clients.iter().map(String::as_str).collect();
        // Read before anything is forgotten: the claims are what say who had the user.
        let holders = store.reaching(&app.name, openid, &clients).await.map_err(|e| failed(e.into()))?;
        let record = UserEventRecord {
            app: app.name.clone(),
            openid: openid.to_owned(),
            event: event.as_str().to_owned(),
            wechat_time,
            acted_at_ms: self.inner.clock.now_ms(),
        };
        if event == UserEvent::InfoModified {
            store.delete_profiles(&app.name, openid).await.map_err(|e| failed(e.into()))?;
            for client in holders {
                self.record(client, &record).await.map_err(|e| failed(e.into()))?;
            }
            return Ok(());
        }
        self.inner.tokens.forget(app, openid).await.map_err(failed)?;
        // Each holder's event, then its claim: a failure leaves the claims of those not yet
        // told, so WeChat's retry (the nonce released) tells exactly them.
        for client in holders {
            self.record(client, &record).await.map_err(|e| failed(e.into()))?;
            store.forget_reach(&app.name, openid, &[client]).await.map_err(|e| failed(e.into()))?;
        }
        // A claim written since the read (a sign-in at this moment) goes too, untold.
        store.forget_reach(&app.name, openid, &clients).await.map_err(|e| failed(e.into()))
    }

    /// Writes `record` to `client`'s feed of user events, counted.
    async fn record(&self, client: &str, record: &UserEventRecord) -> Result<(), crate::store::StoreError> {
        self.inner.store.add_user_event(client, record, self.inner.events_kept).await?;
        let labels = [record.app.as_str(), record.event.as_str()];
        self.inner.metrics.user_events_recorded.with_label_values(&labels).inc();
        Ok(())
    }

    /// Passes a message on to the company's handler as it came, and its answer back.
    async fn forward(&self, endpoint: &Endpoint, query: &str, headers: &HeaderMap, body: Bytes) -> Response {
        let app = endpoint.settings.app.as_str();
        let Some(to) = &endpoint.settings.forward_to else {
            // WeChat takes "success" (or an empty body) as "received, no reply".
            self.count(app, "ignored");
            return success();
        };
        let url = if query.is_empty() { to.as_str().to_owned() } else { [to.as_str(), "?", query].concat() };
        let mut request = self.inner.http.post(url).timeout(endpoint.settings.forward_timeout).body(body);
        if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let answered = async {
            let response = request.send().await?;
            let status = response.status();
            let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
            Ok::<_, reqwest::Error>((status, content_type, response.bytes().await?))
        };
        match answered.await {
            Ok((status, content_type, bytes)) => {
                self.count(app, "forwarded");
                let mut response = (status, bytes).into_response();
                if let Some(content_type) = content_type {
                    response.headers_mut().insert(header::CONTENT_TYPE, content_type);
                }
                response
            }
            Err(error) => {
                self.count(app, "forward_failed");
                tracing::warn!(
                    app,
                    timeout = error.is_timeout(),
                    "the message handler did not answer a forwarded push"
                );
                let status = if error.is_timeout() { StatusCode::GATEWAY_TIMEOUT } else { StatusCode::BAD_GATEWAY };
                (status, "the message handler did not answer\n").into_response()
            }
        }
    }
}

/// WeChat's "received, nothing to reply".
fn success() -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"))], "success").into_response()
}

/// An openid as the RPCs take it: 1..64 of `[A-Za-z0-9_-]`.
fn is_openid(openid: &str) -> bool {
    (1..=64).contains(&openid.len()) && openid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `GET`: the console's URL check. A good signature gets `echostr` back, as text.
#[tracing::instrument(name = "push.verify", skip_all, fields(outcome))]
async fn verify(State(push): State<PushService>, request: Request) -> Response {
    let checked = push.endpoint(request.uri().path()).and_then(|endpoint| {
        let signed = push.check(endpoint, request.uri().query().unwrap_or(""))?;
        let echostr = signed.echostr.filter(|e| e.len() <= 256).ok_or(Refusal::Malformed)?;
        Ok((endpoint.settings.app.as_str(), echostr))
    });
    match checked {
        Ok((app, echostr)) => {
            push.count(app, "verified");
            tracing::Span::current().record("outcome", "verified");
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], echostr).into_response()
        }
        Err(refusal) => refused(&push, request.uri().path(), refusal),
    }
}

/// `POST`: a message. An authorization event is acted on; any other message is forwarded.
#[tracing::instrument(name = "push.receive", skip_all, fields(outcome))]
async fn receive(State(push): State<PushService>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let Ok(endpoint) = push.endpoint(path) else { return refused(&push, path, Refusal::UnknownApp) };
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return refused(&push, path, Refusal::Malformed);
    };
    let query = parts.uri.query().unwrap_or("");
    let judged = async {
        let signed = push.check(endpoint, query)?;
        let plaintext = push.open(endpoint, &signed, &body)?;
        let fields = parse(&plaintext).map_err(|_| Refusal::Malformed)?;
        Ok::<_, Refusal>(match UserEvent::of(&fields) {
            Some(event) => Some(push.act_detached(endpoint, signed, fields, event).await),
            None => None,
        })
    };
    match judged.await {
        Ok(Some(Ok(()))) => {
            push.count(&endpoint.settings.app, "acted");
            tracing::Span::current().record("outcome", "acted");
            success()
        }
        Ok(None) => push.forward(endpoint, query, &parts.headers, body).await,
        Ok(Some(Err(refusal))) | Err(refusal) => refused(&push, path, refusal),
    }
}

/// Counts and logs a refusal (never the query or body), and answers it.
fn refused(push: &PushService, path: &str, refusal: Refusal) -> Response {
    let app = push.inner.endpoints.get(path).map_or("", |e| e.settings.app.as_str());
    push.count(app, refusal.outcome());
    tracing::Span::current().record("outcome", refusal.outcome());
    tracing::info!(app, outcome = refusal.outcome(), "message push refused");
    refusal.response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_query_parses_in_both_modes() {
        let plain = parse_query("signature=ab&timestamp=1409735669&nonce=1320562132&openid=o1").expect("parses");
        assert_eq!(
            (plain.timestamp.as_str(), plain.nonce.as_str(), plain.encrypted),
            ("1409735669", "1320562132", false)
        );
        let safe = parse_query("signature=ab&timestamp=1&nonce=2&encrypt_type=aes&msg_signature=cd").expect("parses");
        assert!(safe.encrypted);
        assert_eq!(safe.msg_signature.as_deref(), Some("cd"));
    }

    #[test]
    fn malformed_push_queries_are_refused() {
        for query in [
            "",
            "timestamp=1&nonce=2",
            "signature=a&nonce=2",
            "signature=a&timestamp=1",
            "signature=a&timestamp=x1&nonce=2",
            "signature=a&timestamp=1&nonce=",
            "signature=a&signature=b&timestamp=1&nonce=2",
            "signature=a&timestamp=1&nonce=2&encrypt_type=des",
            &format!("signature=a&timestamp=1&nonce=2&x={}", "a".repeat(MAX_QUERY)),
        ] {
            assert_eq!(parse_query(query), Err(Refusal::Malformed), "{query}");
        }
    }

    #[test]
    fn refusals_are_plain_4xx_but_a_store_outage() {
        for refusal in [
            Refusal::Malformed,
            Refusal::BadSignature,
            Refusal::Stale,
            Refusal::NotEncrypted,
            Refusal::NoKey,
            Refusal::Undecryptable,
            Refusal::UnknownApp,
            Refusal::Replayed,
        ] {
            assert!(refusal.status().is_client_error(), "{refusal:?}");
        }
        assert_eq!(Refusal::StoreDown.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
