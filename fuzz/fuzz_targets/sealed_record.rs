//! Opening stored records, as the store opens what Redis (or anyone with write access to it)
//! hands back. Two parts per input:
//! - the input opened as a sealed record under a fixed keyring: never panics, and whatever
//!   opens decodes (or not) as each record type without panicking (the cached profile in its
//!   own form too);
//! - a structured round trip: the input sealed as a record's plaintext under the sealing key
//!   opens to itself, and then one flipped bit (at a place and with a mask taken from the
//!   input), a truncation, an extra byte, another storage key or a keyring without the sealing
//!   key each make it not open; the plaintext, decoded as each record type, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use wxauth::fuzzing::{open_profile_record, open_record, profile_plaintext};
use wxauth::store::seal::{Keyring, SealingKey};
use wxauth::store::{CachedProfile, CodeRecord, Flow, Reach, TokenRecord};

const NAME: &str = "wxauth:mp:tok:oUser";

fuzz_target!(|data: &[u8]| {
    let keys = keyring(&[(2, 0x22), (1, 0x11)]);

    // Arbitrary bytes, as a backend may return them.
    if let Ok(plain) = keys.open(NAME, data) {
        decode_each(&plain);
    }
    decode_each_sealed(&keys, data);

    // The round trip.
    let sealed = keys.seal(NAME, data).expect("a fuzz input is far below AES-GCM's limit");
    assert_eq!(keys.open(NAME, &sealed).as_deref(), Ok(data));
    let at = data.iter().map(|&b| usize::from(b)).sum::<usize>() % sealed.len();
    let mask = 1u8 << (data.len() % 8);
    let mut flipped = sealed.clone();
    flipped[at] ^= mask;
    assert!(keys.open(NAME, &flipped).is_err(), "a record with bit {mask:#x} of byte {at} flipped opened");
    assert!(keys.open(NAME, &sealed[..at]).is_err(), "a record cut at {at} opened");
    let mut longer = sealed.clone();
    longer.push(data.first().copied().unwrap_or(0));
    assert!(keys.open(NAME, &longer).is_err(), "a record with a byte appended opened");
    assert!(keys.open("wxauth:mp:tok:oOther", &sealed).is_err(), "a record opened under another key");
    assert!(keyring(&[(1, 0x11)]).open(NAME, &sealed).is_err(), "a record opened without its key");
    assert!(keyring(&[(2, 0x33)]).open(NAME, &sealed).is_err(), "a record opened under a key of the same id");
    decode_each(data);
    decode_each_sealed(&keys, &sealed);
});

fn keyring(keys: &[(u8, u8)]) -> Keyring {
    Keyring::new(keys.iter().map(|&(id, fill)| SealingKey::new(id, &[fill; 32])).collect()).expect("keyring")
}

/// An opened plaintext read as every record the store keeps (what the store does after opening).
fn decode_each(plain: &[u8]) {
    let _ = serde_json::from_slice::<TokenRecord>(plain);
    let _ = serde_json::from_slice::<Flow>(plain);
    let _ = serde_json::from_slice::<CodeRecord>(plain);
    let _ = serde_json::from_slice::<CachedProfile>(plain);
    let _ = profile_plaintext(plain);
    let _ = serde_json::from_slice::<Reach>(plain);
}

/// A sealed value opened as every record the store keeps, through the store's own path.
fn decode_each_sealed(keys: &Keyring, sealed: &[u8]) {
    opens::<TokenRecord>(keys, sealed);
    opens::<Flow>(keys, sealed);
    opens::<CodeRecord>(keys, sealed);
    opens::<CachedProfile>(keys, sealed);
    opens::<Reach>(keys, sealed);
    let _ = open_profile_record(keys, NAME, sealed);
}

fn opens<T: DeserializeOwned>(keys: &Keyring, sealed: &[u8]) {
    let _ = open_record::<T>(keys, NAME, sealed);
}
