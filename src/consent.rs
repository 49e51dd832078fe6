//! Consent belongs to the product it was given to: what a client may read of a user follows
//! from that client's OWN sign-ins, never from the app-wide token record another product's
//! sign-in left.
//!
//! A user's token record is one per app (WeChat hands the same openid to every product of an
//! app, and a refresh serves them all), so it holds whatever the most capable sign-in got: when
//! product A's `snsapi_userinfo` sign-in showed the user WeChat's consent page, the record can
//! read her profile. Product B's silent `snsapi_base` sign-in showed her nothing, so B must not
//! read through it (PIPL: consent is given for a purpose, and separately). Each client's claim
//! on a user ([`crate::store::Reach`]) therefore records the scopes its own exchanges were
//! granted, and a [`Grant`] read from it decides what that client gets:
//! - the profile (GetUserInfo, ExchangeCode's `include_user_info`) only when its grant reads
//!   the profile *and* the token can;
//! - a unionid (in answers and profiles, and FindAccounts by unionid) only when its grant
//!   reads the profile (a mini program's sign-in hands its caller the unionid itself);
//! - RefreshToken and ValidateToken report the grant's scopes as the token can serve them.
//!
//! Clients with `users = "app"` are trusted app-wide by configuration; they read what the token
//! record holds ([`Grant::of_token`]).

use crate::store::{Reach, TokenRecord};
use crate::wechat::{AppKind, Scope};

/// What one client's own sign-ins let it read of one user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    scopes: Vec<String>,
    kind: AppKind,
}

impl Grant {
    /// The grant a client's claim records in an app of `kind`.
    ///
    /// A claim written before scopes were kept (no `scopes`) grants only the least its app kind
    /// can grant: for an official account that is `snsapi_base`, since such a record cannot
    /// tell a consented sign-in from a silent one, and reading it as `snsapi_userinfo` would be
    /// exactly the leak this module stops; the cost is one consent page for that product's
    /// users. Website and mobile-app sign-ins have one scope each, and every one of them showed
    /// the user WeChat's confirmation (a QR scan, the app's authorization), so their old claims
    /// keep it. A mini program's claim has no scopes at all.
    pub fn of(reach: &Reach, kind: AppKind) -> Self {
        let scopes = if reach.scopes.is_empty() { least_scopes(kind) } else { reach.scopes.clone() };
        Self { scopes, kind }
    }

    /// What a `users = "app"` client reads: the token record's own scopes.
    pub fn of_token(record: &TokenRecord, kind: AppKind) -> Self {
        Self { scopes: record.scopes.clone(), kind }
    }

    /// Whether this grant reads the profile (`snsapi_userinfo`, `snsapi_login`).
    pub fn reads_profile(&self) -> bool {
        reads_profile(&self.scopes)
    }

    /// Whether the client may see the user's unionid: a grant that reads the profile (WeChat
    /// gives the unionid only with it), or a mini program sign-in, whose own answer carries it.
    pub fn sees_unionid(&self) -> bool {
        self.reads_profile() || self.kind == AppKind::MiniProgram
    }

    /// The scopes to report to the client: its grant, as far as the token can serve it. A
    /// token serves every scope it holds, and any token serves `snsapi_base` (the openid); a
    /// grant the token cannot serve (the userinfo token died and a silent sign-in replaced it)
    /// is reported as `snsapi_base` for an official account, and as nothing otherwise.
    pub fn scopes_served_by(&self, token_scopes: &[String]) -> Vec<String> {
        let base = Scope::Base.as_str();
        let served: Vec<String> =
            self.scopes.iter().filter(|s| s.as_str() == base || token_scopes.contains(s)).cloned().collect();
        if served.is_empty() && self.kind == AppKind::OfficialAccount { vec![base.to_owned()] } else { served }
    }
}

/// The scopes a client's claim records after a sign-in of its own that was granted `granted`.
/// A userinfo grant the client got earlier survives a later silent sign-in while the token that
/// serves it still works (`kept_reads_profile`: the sign-in kept a live userinfo token rather
/// than replacing it); once that token is gone, so is the grant: the client asks again.
pub fn scopes_after_sign_in(
    earlier: Option<&Reach>,
    kind: AppKind,
    granted: &[String],
    kept_reads_profile: bool,
) -> Vec<String> {
    let mut scopes = granted.to_vec();
    if let Some(earlier) = earlier.map(|r| Grant::of(r, kind))
        && earlier.reads_profile()
        && kept_reads_profile
        && !reads_profile(granted)
    {
        for scope in earlier.scopes {
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
    }
    scopes
}

/// Whether `scopes` read the profile.
pub fn reads_profile(scopes: &[String]) -> bool {
    scopes.iter().filter_map(|s| Scope::parse(s)).any(Scope::grants_userinfo)
}

/// The least an app kind's sign-in grants (for claims recorded without scopes).
fn least_scopes(kind: AppKind) -> Vec<String> {
    let least = match kind {
        AppKind::OfficialAccount => Scope::Base,
        AppKind::Website => Scope::Login,
        AppKind::MobileApp => Scope::UserInfo,
        AppKind::MiniProgram => return Vec::new(),
    };
    vec![least.as_str().to_owned()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reach(scopes: &[&str]) -> Reach {
        Reach { since: 1, scopes: scopes.iter().map(|s| (*s).to_owned()).collect() }
    }

    fn strings(scopes: &[&str]) -> Vec<String> {
        scopes.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn an_official_account_claim_without_scopes_grants_only_snsapi_base() {
        let old = Grant::of(&reach(&[]), AppKind::OfficialAccount);

        assert!(!old.reads_profile());
        assert!(!old.sees_unionid());
        assert_eq!(old.scopes_served_by(&strings(&["snsapi_userinfo"])), ["snsapi_base"]);
    }

    #[test]
    fn website_and_mobile_claims_without_scopes_keep_their_one_consented_scope() {
        assert!(Grant::of(&reach(&[]), AppKind::Website).reads_profile());
        assert!(Grant::of(&reach(&[]), AppKind::MobileApp).reads_profile());
        let mini = Grant::of(&reach(&[]), AppKind::MiniProgram);
        assert!(!mini.reads_profile());
        assert!(mini.sees_unionid(), "a mini program's sign-in answer carries the unionid itself");
    }

    #[test]
    fn a_base_grant_reports_base_even_over_a_userinfo_token() {
        let silent = Grant::of(&reach(&["snsapi_base"]), AppKind::OfficialAccount);

        assert_eq!(silent.scopes_served_by(&strings(&["snsapi_userinfo"])), ["snsapi_base"]);
        assert!(!silent.reads_profile());
    }

    #[test]
    fn a_userinfo_grant_over_a_base_token_reports_only_base() {
        let consented = Grant::of(&reach(&["snsapi_userinfo"]), AppKind::OfficialAccount);

        assert_eq!(consented.scopes_served_by(&strings(&["snsapi_base"])), ["snsapi_base"]);
        assert_eq!(consented.scopes_served_by(&strings(&["snsapi_userinfo"])), ["snsapi_userinfo"]);
    }

    #[test]
    fn a_later_silent_sign_in_keeps_the_userinfo_grant_only_while_its_token_works() {
        let earlier = reach(&["snsapi_userinfo"]);
        let base = strings(&["snsapi_base"]);

        let kept = scopes_after_sign_in(Some(&earlier), AppKind::OfficialAccount, &base, true);
        let lost = scopes_after_sign_in(Some(&earlier), AppKind::OfficialAccount, &base, false);
        let first = scopes_after_sign_in(None, AppKind::OfficialAccount, &base, true);

        assert_eq!(kept, ["snsapi_base", "snsapi_userinfo"]);
        assert_eq!(lost, ["snsapi_base"]);
        assert_eq!(first, ["snsapi_base"], "another product's token gives this client nothing");
    }
}
