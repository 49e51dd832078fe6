//! The relay's parse of `GET /wechat/callback?<query>`: arbitrary query text, as a browser (or
//! anyone) may send it. Invariants beyond "never panics": an accepted `state` is 1..=128 ASCII
//! letters and digits (the flow id alphabet), an accepted `code` 1..=256 printable ASCII
//! characters (it goes into a `Location` header), each the one value of its name in the query,
//! and a query over 4 KiB is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else { return };
    let Some((code, state)) = wxauth::fuzzing::callback_query(query) else { return };
    assert!(query.len() <= 4096);
    assert!((1..=128).contains(&state.len()), "{state:?}");
    assert!(state.bytes().all(|b| b.is_ascii_alphanumeric()), "{state:?}");
    let values = |name: &str| -> Vec<String> {
        url::form_urlencoded::parse(query.as_bytes()).filter(|(n, _)| n == name).map(|(_, v)| v.into_owned()).collect()
    };
    assert_eq!(values("state"), vec![state.clone()]);
    match code {
        Some(code) => {
            assert!((1..=256).contains(&code.len()), "{code:?}");
            assert!(code.bytes().all(|b| b.is_ascii_graphic()), "{code:?}");
            assert_eq!(values("code"), vec![code]);
        }
        None => assert!(values("code").is_empty()),
    }
});
