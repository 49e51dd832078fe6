//! WeChat's message push as the push endpoint reads it: the first line is the query string,
//! the rest the body. Invariants beyond "never panics":
//! - an accepted query has a `timestamp` of 1..=12 digits and a `nonce` of 1..=64 bytes;
//! - the body parses as a message (XML or JSON) or is refused; an `Encrypt` field, and the body
//!   itself as text, decrypt under a fixed key or are refused, never panic;
//! - the simulator's push of the body (as a message, safe mode) verifies and decrypts through the
//!   service's own code to the body and the app's appid: both sides of the safe mode agree.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wxauth::fuzzing::push_query;
use wxauth::push::{aes_key, decrypt, parse, signature_matches};
use wxauth::sim::{PushFormat, PushTarget, SimConfig, Simulator};

/// WeChat's sample EncodingAESKey (its `WXBizMsgCrypt` demo) and a Token.
const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const TOKEN: &str = "fuzzToken";
const APPID: &str = "wxd0000000000000a1";

fn simulator() -> &'static Simulator {
    static SIM: OnceLock<Simulator> = OnceLock::new();
    SIM.get_or_init(|| {
        let sim = Simulator::new(SimConfig::demo());
        let target = PushTarget {
            url: "http://127.0.0.1:9/push".into(),
            token: TOKEN.into(),
            encoding_aes_key: Some(KEY.into()),
            format: PushFormat::Xml,
        };
        sim.set_push_target(APPID, target);
        sim
    })
}

fuzz_target!(|data: &[u8]| {
    let (query, body) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &data[..0]),
    };
    if let Some((timestamp, nonce, _)) = push_query(&String::from_utf8_lossy(query)) {
        assert!((1..=12).contains(&timestamp.len()) && timestamp.bytes().all(|b| b.is_ascii_digit()), "{timestamp:?}");
        assert!((1..=64).contains(&nonce.len()), "{nonce:?}");
    }

    let key = aes_key(KEY).expect("WeChat's sample key");
    if let Ok(fields) = parse(body)
        && let Some(encrypt) = fields.encrypt
    {
        let _ = decrypt(&key, &encrypt);
    }
    let text = String::from_utf8_lossy(body);
    let _ = decrypt(&key, &text);

    // What the simulator encrypts, the service decrypts, whatever the message.
    let signed = simulator().sign_push(APPID, &text).expect("the simulator signs any text");
    let params: Vec<(&str, &str)> = signed.query.split('&').filter_map(|p| p.split_once('=')).collect();
    let param = |name: &str| params.iter().find(|(n, _)| *n == name).map(|(_, v)| *v).expect(name);
    let envelope = parse(signed.body.as_bytes()).expect("the envelope parses");
    let encrypt = envelope.encrypt.expect("the envelope has Encrypt");
    assert!(signature_matches(param("signature"), &[TOKEN, param("timestamp"), param("nonce")]));
    assert!(signature_matches(param("msg_signature"), &[TOKEN, param("timestamp"), param("nonce"), &encrypt]));
    let decrypted = decrypt(&key, &encrypt).expect("the simulator's ciphertext decrypts");
    assert_eq!(decrypted.appid, APPID);
    assert_eq!(decrypted.message, text.as_bytes());
});
