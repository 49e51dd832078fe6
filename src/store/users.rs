//! The user's records: tokens (with their compare-and-write versions), mini program sessions,
//! the unionid's account index, code records, cached profiles, clients' claims (`Reach`) and
//! the refresh lock.

use std::time::Duration;

use super::backend::Op;
use super::keys::{account_aad, account_field};
use super::records::{
    Account, CachedProfile, CodeRecord, LockToken, MiniSession, Reach, ReadCode, TokenRecord, TokenVersion,
};
use super::{Store, StoreError, profile_record};
use crate::secrets::AuthCode;
use crate::wechat::Lang;

impl Store {
    /// The user's token record, if any (a record that does not open counts as none).
    pub async fn get_token(&self, app: &str, openid: &str) -> Result<Option<TokenRecord>, StoreError> {
        let key = self.token_key(app, openid);
        let found = self.call(Op::Get, |b| b.get(&key)).await?;
        Ok(found.and_then(|sealed| self.open(&key, &sealed)))
    }

    /// The user's token record and the version it was read at, for a compare-and-write.
    pub async fn read_token(&self, app: &str, openid: &str) -> Result<Option<(TokenRecord, TokenVersion)>, StoreError> {
        let key = self.token_key(app, openid);
        let found = self.call(Op::Get, |b| b.get(&key)).await?;
        Ok(found.and_then(|sealed| self.open(&key, &sealed).map(|record| (record, TokenVersion(sealed)))))
    }

    /// Stores `record` for `ttl` only if the record is still at `read` (one atomic step on the
    /// token key): false when someone wrote or deleted it since. A refresh that outlived its
    /// lock can then neither bring back a user `ForgetUser` removed nor overwrite a newer
    /// refresh or a new sign-in.
    pub async fn replace_token(
        &self,
        app: &str,
        read: &TokenVersion,
        record: &TokenRecord,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.token_key(app, &record.openid);
        let sealed = self.seal(&key, record)?;
        self.call(Op::SetIfEq, |b| b.set_if_eq(&key, &read.0, &sealed, ttl)).await
    }

    /// Forgets the user (a dead refresh token) only if the record is still at `read`: false
    /// when a new sign-in (or a newer refresh) replaced it, which then stays. Cached profiles
    /// go first, as in [`Store::delete_user`]; losing them to a replaced record only costs a
    /// profile fetch.
    pub async fn delete_token_if(&self, app: &str, openid: &str, read: &TokenVersion) -> Result<bool, StoreError> {
        for lang in Lang::ALL {
            let key = self.profile_key(app, openid, lang);
            self.call(Op::Del, |b| b.del(&key)).await?;
        }
        let key = self.token_key(app, openid);
        self.call(Op::DelIfEq, |b| b.del_if_eq(&key, &read.0)).await
    }

    /// Stores the user's token record until its refresh token dies.
    pub async fn put_token(&self, app: &str, record: &TokenRecord, ttl: Duration) -> Result<(), StoreError> {
        let key = self.token_key(app, &record.openid);
        let sealed = self.seal(&key, record)?;
        self.call(Op::Set, |b| b.set(&key, &sealed, ttl)).await
    }

    /// Forgets the user (the refresh token died, or `ForgetUser`): cached profiles first, then
    /// the tokens, so a failure half-way leaves the record and a retry deletes the rest.
    pub async fn delete_user(&self, app: &str, openid: &str) -> Result<(), StoreError> {
        for lang in Lang::ALL {
            let key = self.profile_key(app, openid, lang);
            self.call(Op::Del, |b| b.del(&key)).await?;
        }
        let key = self.session_key(app, openid);
        self.call(Op::Del, |b| b.del(&key)).await?;
        let key = self.token_key(app, openid);
        self.call(Op::Del, |b| b.del(&key)).await
    }

    /// Drops the user's cached profiles (every language): WeChat said the profile changed
    /// (`user_info_modified`), so the next GetUserInfo asks WeChat.
    pub async fn delete_profiles(&self, app: &str, openid: &str) -> Result<(), StoreError> {
        for lang in Lang::ALL {
            let key = self.profile_key(app, openid, lang);
            self.call(Op::Del, |b| b.del(&key)).await?;
        }
        Ok(())
    }

    /// Remembers a pushed message's `(timestamp, nonce)` for `ttl` (`SET NX`): false when it was
    /// seen already, a replay (docs/design.md §2.6). The value is no secret and not sealed.
    pub async fn claim_push_nonce(
        &self,
        app: &str,
        timestamp: &str,
        nonce: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.push_nonce_key(app, timestamp, nonce);
        self.call(Op::SetNx, |b| b.set_nx(&key, b"1", ttl)).await
    }

    /// Forgets a claimed nonce: the message's work failed, and WeChat's retry must be heard.
    pub async fn release_push_nonce(&self, app: &str, timestamp: &str, nonce: &str) -> Result<(), StoreError> {
        let key = self.push_nonce_key(app, timestamp, nonce);
        self.call(Op::Del, |b| b.del(&key)).await
    }

    /// Stores a mini program user's session for `ttl`, replacing the last one.
    pub async fn put_session(&self, app: &str, session: &MiniSession, ttl: Duration) -> Result<(), StoreError> {
        let key = self.session_key(app, &session.openid);
        let sealed = self.seal(&key, session)?;
        self.call(Op::Set, |b| b.set(&key, &sealed, ttl)).await
    }

    /// A mini program user's session, if one is stored.
    pub async fn get_session(&self, app: &str, openid: &str) -> Result<Option<MiniSession>, StoreError> {
        let key = self.session_key(app, openid);
        let found = self.call(Op::Get, |b| b.get(&key)).await?;
        Ok(found.and_then(|sealed| self.open(&key, &sealed)))
    }

    /// Records `account` under `unionid` and renews the index's life to `ttl` (one `MULTI` on
    /// the one key). The value is sealed under the key and the field, so it cannot be moved to
    /// another person's index or another field.
    pub async fn put_account(&self, unionid: &str, account: &Account, ttl: Duration) -> Result<(), StoreError> {
        let key = self.union_key(unionid);
        let field = account_field(&account.app, &account.openid);
        let sealed = self.seal(&account_aad(&key, &field), account)?;
        self.call(Op::HsetPx, |b| b.hset_px(&key, &field, &sealed, ttl)).await
    }

    /// Every account recorded under `unionid` (entries that do not open are left out).
    pub async fn accounts(&self, unionid: &str) -> Result<Vec<Account>, StoreError> {
        let key = self.union_key(unionid);
        let fields = self.call(Op::Hgetall, |b| b.hgetall(&key)).await?;
        Ok(fields
            .into_iter()
            .filter_map(|(field, sealed)| self.open::<Account>(&account_aad(&key, &field), &sealed))
            .collect())
    }

    /// Takes one account out of `unionid`'s index.
    pub async fn drop_account(&self, unionid: &str, app: &str, openid: &str) -> Result<(), StoreError> {
        let (key, field) = (self.union_key(unionid), account_field(app, openid));
        self.call(Op::Hdel, |b| b.hdel(&key, &field)).await
    }

    /// Writes `record` for `ttl` only if the key is free (`SET NX`): false when a record of
    /// this code exists (read it with [`Store::get_code`]). The mobile-app exchange's claim.
    pub async fn claim_code(&self, code: &AuthCode, record: &CodeRecord, ttl: Duration) -> Result<bool, StoreError> {
        let key = self.code_key(code);
        let sealed = self.seal(&key, record)?;
        self.call(Op::SetNx, |b| b.set_nx(&key, &sealed, ttl)).await
    }

    /// Deletes a code's record (a mobile-app exchange that WeChat refused: a retry asks WeChat).
    pub async fn delete_code(&self, code: &AuthCode) -> Result<(), StoreError> {
        let key = self.code_key(code);
        self.call(Op::Del, |b| b.del(&key)).await
    }

    /// The cached profile in `lang`, if one is stored.
    pub async fn get_profile(&self, app: &str, openid: &str, lang: Lang) -> Result<Option<CachedProfile>, StoreError> {
        let key = self.profile_key(app, openid, lang);
        let found = self.call(Op::Get, |b| b.get(&key)).await?;
        Ok(found.and_then(|sealed| self.open_profile(&key, &sealed)))
    }

    /// Caches a profile for `ttl`.
    pub async fn put_profile(
        &self,
        app: &str,
        openid: &str,
        lang: Lang,
        cached: &CachedProfile,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let key = self.profile_key(app, openid, lang);
        let sealed = self.seal_plain(&key, &profile_record::encode(cached))?;
        self.call(Op::Set, |b| b.set(&key, &sealed, ttl)).await
    }

    /// What wxauth knows of `code`, if anything.
    pub async fn get_code(&self, code: &AuthCode) -> Result<Option<ReadCode>, StoreError> {
        let key = self.code_key(code);
        let found = self.call(Op::Get, |b| b.get(&key)).await?;
        Ok(found.and_then(|sealed| Some(ReadCode { record: self.open(&key, &sealed)?, sealed })))
    }

    /// Replaces the code record `read` with `next` for `ttl`, only if no one changed it since it
    /// was read (one atomic compare-and-set). False: someone did; read again.
    pub async fn swap_code(
        &self,
        code: &AuthCode,
        read: &ReadCode,
        next: &CodeRecord,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.code_key(code);
        let sealed = self.seal(&key, next)?;
        self.call(Op::SetIfEq, |b| b.set_if_eq(&key, &read.sealed, &sealed, ttl)).await
    }

    /// Writes a code record for `ttl`, whatever was there (only the holder of the exchange's
    /// claim does this).
    pub async fn put_code(&self, code: &AuthCode, record: &CodeRecord, ttl: Duration) -> Result<(), StoreError> {
        let key = self.code_key(code);
        let sealed = self.seal(&key, record)?;
        self.call(Op::Set, |b| b.set(&key, &sealed, ttl)).await
    }

    /// Stores `record` only if the user has no record (one atomic `SET NX`): false when
    /// someone wrote one since the caller found none.
    pub async fn create_token(&self, app: &str, record: &TokenRecord, ttl: Duration) -> Result<bool, StoreError> {
        let key = self.token_key(app, &record.openid);
        let sealed = self.seal(&key, record)?;
        self.call(Op::SetNx, |b| b.set_nx(&key, &sealed, ttl)).await
    }

    /// Records `client`'s claim on this user, for `ttl` (the record's life), replacing the last.
    pub async fn put_reach(
        &self,
        app: &str,
        openid: &str,
        client: &str,
        reach: &Reach,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let key = self.reach_key(app, openid, client);
        let sealed = self.seal(&key, reach)?;
        self.call(Op::Set, |b| b.set(&key, &sealed, ttl)).await
    }

    /// `client`'s claim on this user, if it exchanged a code of the user within the record's
    /// life (a claim that does not open counts as none: the client signs the user in again).
    pub async fn get_reach(&self, app: &str, openid: &str, client: &str) -> Result<Option<Reach>, StoreError> {
        let key = self.reach_key(app, openid, client);
        let found = self.call(Op::Get, |b| b.get(&key)).await?;
        Ok(found.and_then(|sealed| self.open::<Reach>(&key, &sealed)))
    }

    /// A `users = "own"` client's GetUserInfo read: its claim on the user and the cached
    /// profile, in one command (`MGET`): the claim check costs no round trip and no command of
    /// its own.
    pub async fn get_reach_and_profile(
        &self,
        app: &str,
        openid: &str,
        client: &str,
        lang: Lang,
    ) -> Result<(Option<Reach>, Option<CachedProfile>), StoreError> {
        let (reach_key, profile_key) = (self.reach_key(app, openid, client), self.profile_key(app, openid, lang));
        let (reach, profile) = self.call(Op::GetTwo, |b| b.get_two(&reach_key, &profile_key)).await?;
        let reach = reach.and_then(|sealed| self.open::<Reach>(&reach_key, &sealed));
        Ok((reach, profile.and_then(|sealed| self.open_profile(&profile_key, &sealed))))
    }

    /// Whether any of `clients` holds a claim on this user (ForgetUser: the user's records go
    /// only when none does). The reads go out at once (different keys: concurrent commands).
    pub async fn any_reach(&self, app: &str, openid: &str, clients: &[&str]) -> Result<bool, StoreError> {
        let reads = clients.iter().map(|client| self.get_reach(app, openid, client));
        let mut any = false;
        for read in futures::future::join_all(reads).await {
            any |= read?.is_some();
        }
        Ok(any)
    }

    /// Which of `clients` hold a claim on this user: who signed the user in (the clients a
    /// pushed authorization event is told to, docs/design.md §2.6). The reads go out at once.
    pub async fn reaching<'c>(&self, app: &str, openid: &str, clients: &[&'c str]) -> Result<Vec<&'c str>, StoreError> {
        let reads = clients.iter().map(|client| self.get_reach(app, openid, client));
        let mut holders = Vec::new();
        for (client, read) in clients.iter().zip(futures::future::join_all(reads).await) {
            if read?.is_some() {
                holders.push(*client);
            }
        }
        Ok(holders)
    }

    /// Forgets which of `clients` reached this user.
    pub async fn forget_reach(&self, app: &str, openid: &str, clients: &[&str]) -> Result<(), StoreError> {
        for client in clients {
            let key = self.reach_key(app, openid, client);
            self.call(Op::Del, |b| b.del(&key)).await?;
        }
        Ok(())
    }

    /// Takes the refresh lock of one user for `ttl`; `None` when another holder has it.
    pub async fn try_lock(&self, app: &str, openid: &str, ttl: Duration) -> Result<Option<LockToken>, StoreError> {
        let token = format!("{}:{}", self.inner.replica, crate::random_id(16)).into_bytes();
        let key = self.lock_key(app, openid);
        let taken = self.call(Op::SetNx, |b| b.set_nx(&key, &token, ttl)).await?;
        Ok(taken.then_some(LockToken(token)))
    }

    /// Releases a lock we hold (compare-and-delete: never another holder's lock).
    pub async fn unlock(&self, app: &str, openid: &str, token: LockToken) -> Result<(), StoreError> {
        let key = self.lock_key(app, openid);
        self.call(Op::DelIfEq, |b| b.del_if_eq(&key, &token.0)).await.map(|_| ())
    }
}
