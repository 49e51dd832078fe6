//! The cached profile's stored form: protobuf (prost) behind a format byte, where every other
//! record is JSON (docs/design.md §4.2).
//!
//! A cached GetUserInfo opens this record on every call, and reading it as JSON (eleven keys
//! matched by name, every string scanned and checked) was the largest share of wxauth's own work
//! on that path: with it, 102.9k instructions per call, 96.2k without (`scripts/instructions
//! userinfo`, issue 19). Protobuf reads the same fields by tag. Profiles written as JSON by
//! earlier versions still open. An earlier version reads a record in this form as unopenable,
//! so during a rolling upgrade its replicas ask WeChat for those profiles again (counted in
//! `wxauth_sealed_records_unopenable_total`); it is a cache, and no other record changes form.

use super::Store;
use super::records::CachedProfile;
use crate::wechat::Profile;

/// The first byte of a record in this form. A JSON object, as earlier versions wrote it,
/// starts with `{`.
const PROTOBUF: u8 = 1;

/// [`CachedProfile`] as protobuf. Tags are forever: a new field takes a new tag, and a record
/// without it reads as the field's default.
#[derive(Clone, PartialEq, prost::Message)]
struct Stored {
    #[prost(string, tag = "1")]
    openid: String,
    #[prost(string, tag = "2")]
    nickname: String,
    #[prost(int64, tag = "3")]
    sex: i64,
    #[prost(string, tag = "4")]
    province: String,
    #[prost(string, tag = "5")]
    city: String,
    #[prost(string, tag = "6")]
    country: String,
    #[prost(string, tag = "7")]
    headimgurl: String,
    #[prost(string, repeated, tag = "8")]
    privilege: Vec<String>,
    #[prost(string, optional, tag = "9")]
    unionid: Option<String>,
    #[prost(int64, tag = "10")]
    fetched_at: i64,
}

/// The plaintext a cached profile is sealed as.
pub(super) fn encode(cached: &CachedProfile) -> Vec<u8> {
    let Profile { openid, nickname, sex, province, city, country, headimgurl, privilege, unionid } =
        cached.profile.clone();
    let stored = Stored {
        openid,
        nickname,
        sex,
        province,
        city,
        country,
        headimgurl,
        privilege,
        unionid,
        fetched_at: cached.fetched_at,
    };
    let mut plain = Vec::with_capacity(1 + prost::Message::encoded_len(&stored));
    plain.push(PROTOBUF);
    prost::Message::encode(&stored, &mut plain).expect("a Vec grows as needed");
    plain
}

/// A cached profile from its opened plaintext, in this form or as JSON (earlier versions);
/// `None` for anything else.
pub(crate) fn decode(plain: &[u8]) -> Option<CachedProfile> {
    let Some((&PROTOBUF, body)) = plain.split_first() else {
        return serde_json::from_slice(plain).ok();
    };
    let Stored { openid, nickname, sex, province, city, country, headimgurl, privilege, unionid, fetched_at } =
        prost::Message::decode(body).ok()?;
    let profile = Profile { openid, nickname, sex, province, city, country, headimgurl, privilege, unionid };
    Some(CachedProfile { profile, fetched_at })
}

impl Store {
    /// A cached profile read from the store, in either form ([`decode`]).
    pub(super) fn open_profile(&self, key: &str, sealed: &[u8]) -> Option<CachedProfile> {
        self.open_as(key, sealed, decode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> CachedProfile {
        CachedProfile {
            profile: Profile {
                openid: "oAlice".into(),
                nickname: "Alice 爱丽丝".into(),
                sex: 2,
                province: "Guangdong".into(),
                city: "Shenzhen".into(),
                country: "CN".into(),
                headimgurl: "https://thirdwx.qlogo.cn/mmopen/vi_32/Q0j4/132".into(),
                privilege: vec!["chinaunicom".into(), "p2".into()],
                unionid: Some("uAlice".into()),
            },
            fetched_at: 1_767_225_600,
        }
    }

    #[test]
    fn a_profile_reads_back_as_written() {
        let plain = encode(&alice());
        assert_eq!(plain[0], PROTOBUF);
        assert_eq!(decode(&plain), Some(alice()));
        let mut bare = alice();
        bare.profile = Profile {
            openid: "oBob".into(),
            nickname: String::new(),
            sex: 0,
            province: String::new(),
            city: String::new(),
            country: String::new(),
            headimgurl: String::new(),
            privilege: Vec::new(),
            unionid: None,
        };
        assert_eq!(decode(&encode(&bare)), Some(bare), "empty fields and no unionid");
        let mut empty_unionid = alice();
        empty_unionid.profile.unionid = Some(String::new());
        assert_eq!(decode(&encode(&empty_unionid)), Some(empty_unionid), "an empty unionid is not a missing one");
    }

    #[test]
    fn a_profile_written_as_json_by_an_earlier_version_still_reads() {
        let json = serde_json::to_vec(&alice()).expect("json");
        assert_eq!(json[0], b'{');
        assert_eq!(decode(&json), Some(alice()));
        let old = br#"{"profile":{"openid":"oBob","nickname":"Bob","sex":"1","privilege":[]},"fetched_at":5}"#;
        let read = decode(old).expect("an old record with a string sex");
        assert_eq!((read.profile.sex, read.fetched_at, read.profile.unionid), (1, 5, None));
    }

    #[test]
    fn what_is_neither_form_does_not_read() {
        assert_eq!(decode(b""), None);
        assert_eq!(decode(&[PROTOBUF, 0x0a, 0x05, b'o']), None, "a string cut short");
        assert_eq!(decode(&[PROTOBUF, 0x0a, 0x02, 0xff, 0xfe]), None, "an openid that is not UTF-8");
        assert_eq!(decode(b"[1,2]"), None);
    }
}
