//! The OpenID Provider's records (src/oidc/): its pending authorization requests, its codes and
//! its access tokens, each sealed under its own key like every record. The ids in the keys are
//! hashed (a code or a token is a credential, and a key is not secret). Single use is a
//! compare-and-set over the exact bytes read, as for WeChat's codes (docs/design.md §12.1).

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};

use super::backend::Op;
use super::{Store, StoreError};

/// A record read together with the bytes it was read as (for a compare-and-set).
#[derive(Debug)]
pub struct Versioned<T> {
    /// The record.
    pub record: T,
    sealed: Vec<u8>,
}

impl Store {
    /// `{prefix}:oidc:{kind}:{sha256(id)}`.
    fn oidc_key(&self, kind: &str, id: &str) -> String {
        let digest = Sha256::digest(id.as_bytes());
        format!("{}:oidc:{kind}:{}", self.inner.prefix, hex::encode(digest))
    }

    /// Stores an OIDC record of `kind` under `id` for `ttl`.
    pub async fn put_oidc<T: Serialize>(
        &self,
        kind: &str,
        id: &str,
        record: &T,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let key = self.oidc_key(kind, id);
        let sealed = self.seal(&key, record)?;
        self.call(Op::Set, |b| b.set(&key, &sealed, ttl)).await
    }

    /// The OIDC record of `kind` under `id`, with its version.
    pub async fn get_oidc<T: DeserializeOwned>(
        &self,
        kind: &str,
        id: &str,
    ) -> Result<Option<Versioned<T>>, StoreError> {
        let key = self.oidc_key(kind, id);
        let found = self.call(Op::Get, |b| b.get(&key)).await?;
        Ok(found.and_then(|sealed| self.open(&key, &sealed).map(|record| Versioned { record, sealed })))
    }

    /// Replaces the record read as `read` by `record` for `ttl`; false when it changed or went
    /// meanwhile (another use of it won).
    pub async fn swap_oidc<T: Serialize, R>(
        &self,
        kind: &str,
        id: &str,
        read: &Versioned<R>,
        record: &T,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.oidc_key(kind, id);
        let sealed = self.seal(&key, record)?;
        self.call(Op::SetIfEq, |b| b.set_if_eq(&key, &read.sealed, &sealed, ttl)).await
    }

    /// Takes the record of `kind` under `id` out: `Some` only for the one caller whose delete
    /// removed it (single use however many take it at once).
    pub async fn take_oidc<T: DeserializeOwned>(&self, kind: &str, id: &str) -> Result<Option<T>, StoreError> {
        let key = self.oidc_key(kind, id);
        let Some(sealed) = self.call(Op::Get, |b| b.get(&key)).await? else { return Ok(None) };
        if !self.call(Op::DelIfEq, |b| b.del_if_eq(&key, &sealed)).await? {
            return Ok(None);
        }
        Ok(self.open(&key, &sealed))
    }

    /// Deletes the record of `kind` under `id`.
    pub async fn delete_oidc(&self, kind: &str, id: &str) -> Result<(), StoreError> {
        let key = self.oidc_key(kind, id);
        self.call(Op::Del, |b| b.del(&key)).await
    }
}
