//! Phone numbers a client asked wxauth to keep (GetPhoneNumber's `keep`, issue 21): the number,
//! sealed, with the mini program user (`{app}:phone:{openid}`), and an index from the number to
//! the accounts it was kept with (`phone:{tag}`), so that FindAccounts can look a person up by
//! phone. The index key is a keyed hash (HMAC-SHA-256 under the tagging key derived from the
//! sealing key, [`super::seal::Keyring::tags_under_each`]), never a plain hash: phone numbers
//! are so few (about 10^11 in China) that a plain SHA-256 of one is reversed by trying them all
//! in seconds, and a Redis dump would then name every person kept. Keys and lives:
//! docs/design.md §4.1.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::backend::Op;
use super::keys::account_aad;
use super::records::Account;
use super::{Store, StoreError};
use crate::wechat::PhoneNumber;

/// The purpose string of the index's tag: a phone tag never verifies as a flow tag (§11.3).
const PHONE_TAG_PURPOSE: &str = "phone index";

/// A number kept with a user. `Debug` shows no digit.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeptPhone {
    /// The country code, e.g. "86", as WeChat gave it.
    pub country_code: String,
    /// The number without country code (`purePhoneNumber`).
    pub pure_phone_number: PhoneNumber,
    /// When it was kept, Unix seconds.
    pub kept_at: i64,
}

impl KeptPhone {
    /// The number as the index knows it: `(country_code, pure_phone_number)`.
    pub fn number(&self) -> (&str, &str) {
        (&self.country_code, self.pure_phone_number.secret())
    }
}

/// One entry of a number's index: the account it was kept with and the client that kept it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhoneEntry {
    /// The mini program account (`last_sign_in`: when the number was kept).
    pub account: Account,
    /// The client that kept it (the field's last part).
    pub client: String,
}

/// The field of an account in a number's index: one per client that kept it, so a
/// `users = "own"` client finds only what it kept itself, and its ForgetUser drops only its own.
fn phone_field(app: &str, openid: &str, client: &str) -> String {
    format!("{app}:{openid}:{client}")
}

impl Store {
    fn phone_key(&self, app: &str, openid: &str) -> String {
        format!("{}:{app}:phone:{openid}", self.inner.prefix)
    }

    /// The index keys of a number under every configured sealing key, the sealing one first
    /// (it writes; all are read and cleaned, so a key rotation loses no entry).
    fn phone_index_keys(&self, country_code: &str, pure: &str) -> Vec<String> {
        let tags = self.inner.keys.tags_under_each(&[PHONE_TAG_PURPOSE, country_code, pure]);
        tags.iter().map(|tag| format!("{}:phone:{}", self.inner.prefix, hex::encode(tag))).collect()
    }

    /// Keeps `kept` with the user for `ttl` and records the account under the number for
    /// `client` (the index's life renewed to `ttl`). The number record first: an index entry
    /// whose record is missing or names another number is dropped by the next look-up.
    pub async fn put_phone(
        &self,
        account: &Account,
        client: &str,
        kept: &KeptPhone,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let key = self.phone_key(&account.app, &account.openid);
        let sealed = self.seal(&key, kept)?;
        self.call(Op::Set, |b| b.set(&key, &sealed, ttl)).await?;
        let keys = self.phone_index_keys(&kept.country_code, kept.pure_phone_number.secret());
        let (index, field) = (&keys[0], phone_field(&account.app, &account.openid, client));
        let sealed = self.seal(&account_aad(index, &field), account)?;
        self.call(Op::HsetPx, |b| b.hset_px(index, &field, &sealed, ttl)).await
    }

    /// The number kept with the user, if any.
    pub async fn get_phone(&self, app: &str, openid: &str) -> Result<Option<KeptPhone>, StoreError> {
        let key = self.phone_key(app, openid);
        let found = self.call(Op::Get, |b| b.get(&key)).await?;
        Ok(found.and_then(|sealed| self.open(&key, &sealed)))
    }

    /// Deletes the number kept with the user (its index entries: [`Store::drop_phone_entries`]).
    pub async fn delete_phone(&self, app: &str, openid: &str) -> Result<(), StoreError> {
        let key = self.phone_key(app, openid);
        self.call(Op::Del, |b| b.del(&key)).await
    }

    /// Every entry recorded under the number (entries that do not open are left out).
    pub async fn phone_entries(&self, country_code: &str, pure: &str) -> Result<Vec<PhoneEntry>, StoreError> {
        let mut entries = Vec::new();
        for key in self.phone_index_keys(country_code, pure) {
            let fields = self.call(Op::Hgetall, |b| b.hgetall(&key)).await?;
            for (field, sealed) in fields {
                let Some(account) = self.open::<Account>(&account_aad(&key, &field), &sealed) else { continue };
                let prefix = format!("{}:{}:", account.app, account.openid);
                if let Some(client) = field.strip_prefix(&prefix) {
                    entries.push(PhoneEntry { client: client.to_owned(), account });
                }
            }
        }
        Ok(entries)
    }

    /// Takes the user's entries out of the number's index: `client`'s only, or (`None`) every
    /// client's.
    pub async fn drop_phone_entries(
        &self,
        (country_code, pure): (&str, &str),
        app: &str,
        openid: &str,
        client: Option<&str>,
    ) -> Result<(), StoreError> {
        for key in self.phone_index_keys(country_code, pure) {
            let fields = match client {
                Some(client) => vec![phone_field(app, openid, client)],
                None => {
                    let prefix = phone_field(app, openid, "");
                    let all = self.call(Op::Hgetall, |b| b.hgetall(&key)).await?;
                    all.into_iter().map(|(field, _)| field).filter(|f| f.starts_with(&prefix)).collect()
                }
            };
            for field in fields {
                self.call(Op::Hdel, |b| b.hdel(&key, &field)).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest as _, Sha256};

    use super::*;
    use crate::store::seal::Keyring;

    #[test]
    fn a_kept_number_shows_no_digit_in_debug() {
        let number: PhoneNumber = serde_json::from_str("\"13800138000\"").expect("a number");
        let kept = KeptPhone { country_code: "86".into(), pure_phone_number: number, kept_at: 1 };
        let shown = format!("{kept:?}");
        assert!(!shown.contains("13800138000") && shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn the_index_tag_is_keyed_not_a_plain_hash_and_every_key_yields_its_own() {
        let (one, two) = (Keyring::generate_line(1), Keyring::generate_line(2));
        let rotated = Keyring::parse(&format!("{two}\n{one}")).expect("keyring");
        let before = Keyring::parse(&one).expect("keyring");
        let parts = [PHONE_TAG_PURPOSE, "86", "13800138000"];
        let tags = rotated.tags_under_each(&parts);
        assert_eq!(tags.len(), 2);
        assert_eq!(tags[0], rotated.tag(&parts), "the sealing key's tag first: it writes");
        assert_eq!(tags[1], before.tag(&parts), "the old key's tag still finds entries written before");
        assert_ne!(tags[0], tags[1]);
        let plain = Sha256::digest(b"8613800138000");
        assert!(tags.iter().all(|t| t[..] != plain[..16]), "never a plain SHA-256 of the number");
    }
}
