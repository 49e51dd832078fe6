//! One person across apps: every real sign-in records its account under the unionid;
//! FindAccounts lists the caller's share of them; ForgetUser and vanished records take accounts
//! out of the index; snapshot and snsapi_base sign-ins are never recorded.

use wxauth::proto::{self, AppKind};

use crate::both_backends;
use crate::helpers::{Backend, PASSPORT_KEY, TRADE_KEY, spawn_app};

async fn one_person_has_one_unionid_across_four_apps(backend: Backend) {
    let app = spawn_app(backend).await;
    let mp = app.login("alice", "snsapi_userinfo").await;
    let web = app.exchange("web", &app.relayed("web", "alice", "snsapi_login").await).await.expect("web");
    app.advance(std::time::Duration::from_secs(1));
    let mobile = app.mobile_login("alice").await;
    app.advance(std::time::Duration::from_secs(1));
    let mini = app.mini_login("alice").await;
    let unionid = app.sim.unionid("alice");
    assert!([&mp.unionid, &web.unionid, &mobile.unionid, &mini.unionid].iter().all(|u| **u == unionid));

    let found = app.find_accounts_as(PASSPORT_KEY, &unionid).await.expect("find");

    let listed: Vec<(&str, &str, i32)> = found.iter().map(|a| (a.app.as_str(), a.openid.as_str(), a.kind)).collect();
    assert_eq!(listed.len(), 4, "{listed:?}");
    assert_eq!(listed[0], ("mini", mini.openid.as_str(), AppKind::MiniProgram as i32), "newest first");
    assert_eq!(listed[1], ("app", mobile.openid.as_str(), AppKind::MobileApp as i32));
    assert!(listed.contains(&("mp", mp.openid.as_str(), AppKind::OfficialAccount as i32)));
    assert!(listed.contains(&("web", web.openid.as_str(), AppKind::Website as i32)));
    assert!(found.iter().all(|a| a.last_sign_in_time.is_some_and(|t| (t.seconds - app.clock.now_secs()).abs() <= 3)));
}

async fn snapshot_and_base_sign_ins_are_never_recorded(backend: Backend) {
    let app = spawn_app(backend).await;
    let snap = app.login("snap", "snsapi_userinfo").await;
    assert!(snap.is_snapshot_user);
    let base = app.login("bob", "snsapi_base").await;
    assert_eq!(base.unionid, "");
    for user in ["snap", "bob"] {
        let found = app.find_accounts_as(PASSPORT_KEY, &app.sim.unionid(user)).await.expect("find");
        assert!(found.is_empty(), "{user}: {found:?}");
    }
}

/// Snapshot pages as the field reports them (issue 20): `is_snapshotuser` missing, and one
/// virtual unionid on many virtual openids. The first such sign-in cannot be told from a real
/// user's; from the second on, a unionid seen on two openids of one app is not a person's: the
/// answer has no unionid, the token record keeps none, and FindAccounts lists nothing for it.
async fn a_unionid_on_two_openids_of_one_app_is_never_linked(backend: Backend) {
    let app = spawn_app(backend).await;
    app.sim.set_messy_snapshots(true);
    let unionid = app.sim.unionid("snap");
    let first = app.login("snap", "snsapi_userinfo").await;
    assert!(!first.is_snapshot_user, "the flag is missing");
    assert_eq!(first.unionid, unionid, "the first cannot be told from a real user's");

    let second = app.login("snap", "snsapi_userinfo").await;

    assert_ne!(second.openid, first.openid);
    assert_eq!(second.unionid, "", "a unionid on two openids of one app is not returned");
    let record = app.store.get_token("mp", &second.openid).await.expect("store").expect("record");
    assert_eq!(record.unionid, None, "nor stored");
    let found = app.find_accounts_as(PASSPORT_KEY, &unionid).await.expect("find");
    assert!(found.is_empty(), "nor linked: {found:?}");
    let third = app.login("snap", "snsapi_userinfo").await;
    assert_eq!(third.unionid, "");
    // A real person in the same app is unaffected.
    let alice = app.login("alice", "snsapi_userinfo").await;
    assert_eq!(alice.unionid, app.sim.unionid("alice"));
    assert_eq!(app.find_accounts_as(PASSPORT_KEY, &alice.unionid).await.expect("find").len(), 1);
}

async fn find_accounts_shows_only_the_callers_apps_and_its_own_users(backend: Backend) {
    let app = spawn_app(backend).await;
    app.login("alice", "snsapi_userinfo").await; // passport, mp
    app.mini_login("alice").await; // passport, mini
    let unionid = app.sim.unionid("alice");
    let trade = app.find_accounts_as(TRADE_KEY, &unionid).await.expect("find");
    assert!(trade.is_empty(), "trade (users = own) signed no one in: {trade:?}");

    let relayed = app.relayed_as(TRADE_KEY, "mp", "alice", "snsapi_userinfo").await;
    app.exchange_as(TRADE_KEY, "mp", &relayed.flow_id, &relayed.code).await.expect("trade signs alice in");
    let trade = app.find_accounts_as(TRADE_KEY, &unionid).await.expect("find");
    let apps: Vec<&str> = trade.iter().map(|a| a.app.as_str()).collect();
    assert_eq!(apps, ["mp"], "only trade's app, never `mini`");

    let bad = app.find_accounts_as(PASSPORT_KEY, "o6_bm/../x").await.expect_err("invalid unionid");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
}

async fn forgotten_and_vanished_users_leave_the_index(backend: Backend) {
    let app = spawn_app(backend).await;
    let mobile = app.mobile_login("alice").await;
    let mini = app.mini_login("alice").await;
    let mp = app.login("alice", "snsapi_userinfo").await;
    let unionid = app.sim.unionid("alice");

    let forget = proto::ForgetUserRequest { app: "app".into(), openid: mobile.openid.clone(), device: 0 };
    app.grpc.clone().forget_user(app.req(forget)).await.expect("forget");
    // A record gone without ForgetUser (expired, a dead refresh token): dropped on the next look.
    app.store.delete_user("mp", &mp.openid).await.expect("delete");

    let found = app.find_accounts_as(PASSPORT_KEY, &unionid).await.expect("find");
    let apps: Vec<&str> = found.iter().map(|a| a.app.as_str()).collect();
    assert_eq!(apps, ["mini"]);
    let left = app.store.accounts(&unionid).await.expect("index");
    assert_eq!(left.len(), 1, "both stale entries removed from the index, not just hidden");
    assert_eq!(left[0].openid, mini.openid);

    if let Some(redis) = &app.redis {
        let mut conn = redis.lock().await.conn().await;
        let key = format!("wxauth:union:{unionid}");
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await.expect("pttl");
        assert!(ttl > 29 * 86_400_000, "the index lives token.refresh_life from the last sign-in: {ttl}");
        let fields: Vec<String> = redis::cmd("HKEYS").arg(&key).query_async(&mut conn).await.expect("hkeys");
        assert_eq!(fields, [format!("mini:{}", mini.openid)]);
    }
}

async fn sign_ins_are_counted_by_app_kind(backend: Backend) {
    let app = spawn_app(backend).await;
    app.login("alice", "snsapi_userinfo").await;
    app.mobile_login("alice").await;
    app.mini_login("alice").await;
    app.mini_login("bob").await;
    let scrape = app.http.get(format!("http://{}/metrics", app.admin_addr)).send().await.expect("admin");
    let text = scrape.text().await.expect("text");
    for line in [
        r#"wxauth_sign_ins_total{kind="official_account"} 1"#,
        r#"wxauth_sign_ins_total{kind="mobile_app"} 1"#,
        r#"wxauth_sign_ins_total{kind="mini_program"} 2"#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
}

both_backends!(
    one_person_has_one_unionid_across_four_apps,
    snapshot_and_base_sign_ins_are_never_recorded,
    a_unionid_on_two_openids_of_one_app_is_never_linked,
    find_accounts_shows_only_the_callers_apps_and_its_own_users,
    forgotten_and_vanished_users_leave_the_index,
    sign_ins_are_counted_by_app_kind,
);
