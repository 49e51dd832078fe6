//! An app's own credentials (issue 21): its access token (`cgi-bin/stable_token`) and its
//! `jsapi_ticket`, one record each, sealed like every record; the lock that lets one replica
//! renew each; and the count of the day's forced refreshes (WeChat allows 20 a day per app).
//! The protocol on top is `crate::tokens`'s (docs/design.md §12.9); here only the keys and
//! one-key steps, through the same backend primitives and wrapper as the user records.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::backend::Op;
use super::records::LockToken;
use super::{Store, StoreError};
use crate::secrets::AppCredentialValue;

/// Which of an app's credentials a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    /// The app's access token (`cgi-bin/stable_token`, normal mode).
    AccessToken,
    /// The app's `jsapi_ticket` (`cgi-bin/ticket/getticket?type=jsapi`), made with the token.
    JsapiTicket,
}

impl CredentialKind {
    /// Its name in keys, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::AccessToken => "access_token",
            CredentialKind::JsapiTicket => "jsapi_ticket",
        }
    }
}

/// One app credential as WeChat gave it, and when.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppCredential {
    /// The token or ticket.
    pub value: AppCredentialValue,
    /// When it expires, Unix seconds (service clock): WeChat's `expires_in` after the fetch.
    pub expires_at: i64,
    /// When it was fetched, Unix ms: tells a renewal made since a caller looked (never the
    /// value: WeChat's normal mode gives the same token again while it lives).
    pub fetched_at_ms: i64,
    /// Whether a forced refresh made it (WeChat ignores a second one within 30 s).
    #[serde(default)]
    pub forced: bool,
}

/// The exact sealed bytes a credential was read at, for a compare-and-write (`None` inside:
/// there was no record). `Debug` shows only the length.
#[derive(Clone)]
pub struct CredentialVersion(Option<Vec<u8>>);

impl std::fmt::Debug for CredentialVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CredentialVersion({} bytes)", self.0.as_ref().map_or(0, Vec::len))
    }
}

/// How long a day's count of forced refreshes is kept: the day and one more (clocks differ).
const FORCED_COUNT_LIFE: Duration = Duration::from_secs(2 * 24 * 3600);

impl Store {
    fn app_credential_key(&self, app: &str, kind: CredentialKind) -> String {
        [self.inner.prefix.as_str(), ":", app, ":apptok:", kind.as_str()].concat()
    }

    /// The lock key of a credential: `{app}:lock:!{kind}`. `!` is in no openid, so it never
    /// meets a user's refresh lock (`{app}:lock:{openid}`).
    fn app_credential_lock_key(&self, app: &str, kind: CredentialKind) -> String {
        format!("{}:{app}:lock:!{}", self.inner.prefix, kind.as_str())
    }

    fn forced_refreshes_key(&self, app: &str, day: i64) -> String {
        format!("{}:{app}:apptok:forced:{day}", self.inner.prefix)
    }

    /// The app's credential of `kind`, if any (one that does not open counts as none), and the
    /// version it was read at.
    pub async fn read_app_credential(
        &self,
        app: &str,
        kind: CredentialKind,
    ) -> Result<(Option<AppCredential>, CredentialVersion), StoreError> {
        let key = self.app_credential_key(app, kind);
        let found = self.call(Op::Get, |b| b.get(&key)).await?;
        let opened = found.as_ref().and_then(|sealed| self.open(&key, sealed));
        // The version is the bytes found, opened or not: a record that does not open (a retired
        // sealing key) is replaced by the next renewal's compare-and-set, not left to block it.
        Ok((opened, CredentialVersion(found)))
    }

    /// Stores `credential` for `ttl` only if the record is still at `read` (compare-and-set, or
    /// `SET NX` when there was none): false when someone wrote since.
    pub async fn replace_app_credential(
        &self,
        app: &str,
        kind: CredentialKind,
        read: &CredentialVersion,
        credential: &AppCredential,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.app_credential_key(app, kind);
        let sealed = self.seal(&key, credential)?;
        match &read.0 {
            Some(expected) => self.call(Op::SetIfEq, |b| b.set_if_eq(&key, expected, &sealed, ttl)).await,
            None => self.call(Op::SetNx, |b| b.set_nx(&key, &sealed, ttl)).await,
        }
    }

    /// Takes the lock of the app's credential of `kind` for `ttl`; `None` when another holds it.
    pub async fn try_lock_app_credential(
        &self,
        app: &str,
        kind: CredentialKind,
        ttl: Duration,
    ) -> Result<Option<LockToken>, StoreError> {
        let token = format!("{}:{}", self.inner.replica, crate::random_id(16)).into_bytes();
        let key = self.app_credential_lock_key(app, kind);
        let taken = self.call(Op::SetNx, |b| b.set_nx(&key, &token, ttl)).await?;
        Ok(taken.then_some(LockToken(token)))
    }

    /// Releases a credential lock we hold (compare-and-delete).
    pub async fn unlock_app_credential(
        &self,
        app: &str,
        kind: CredentialKind,
        token: LockToken,
    ) -> Result<(), StoreError> {
        let key = self.app_credential_lock_key(app, kind);
        self.call(Op::DelIfEq, |b| b.del_if_eq(&key, &token.0)).await.map(|_| ())
    }

    /// Counts one forced refresh of the app on `day` (across replicas: one `INCRBY` on the
    /// day's counter, the open-flow cap's primitive) and answers the day's count with it.
    pub async fn count_forced_refresh(&self, app: &str, day: i64) -> Result<i64, StoreError> {
        let key = self.forced_refreshes_key(app, day);
        // The primitive's `MGET` needs a key (Redis refuses an empty one): the counter itself.
        let read_back = [key.clone()];
        let (count, _) = self.call(Op::Admit, |b| b.admit(&key, 1, &read_back, FORCED_COUNT_LIFE)).await?;
        Ok(count)
    }

    /// Takes back a forced refresh counted past the allowance (it was not made).
    pub async fn uncount_forced_refresh(&self, app: &str, day: i64) -> Result<(), StoreError> {
        let key = self.forced_refreshes_key(app, day);
        self.call(Op::Release, |b| b.release(&key, 1, FORCED_COUNT_LIFE)).await
    }
}
