//! Sealing of stored records: AES-256-GCM with a random 96-bit nonce, the key id in a 1-byte
//! header and the record's storage key as associated data, so a record copied under another
//! key (another openid, another app) does not open. Several keys may be configured: the first
//! seals, all open, which is how keys rotate.
//!
//! Layout of a sealed record: `[key id: 1 byte][nonce: 12 bytes][ciphertext + 16-byte tag]`.
//!
//! Each key also yields a tagging key (HMAC-SHA-256, derived from the sealing key under its own
//! label, so no key material serves two purposes): [`Keyring::tag`] binds short values that
//! travel outside the store, such as flow ids, to what they were made for.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use rand::RngCore as _;
use sha2::Sha256;

/// How many bytes of an HMAC a tag keeps: 128 bits.
pub(crate) const TAG_LEN: usize = 16;
/// The shortest leading part of a tag [`Keyring::verify_tag`] accepts (64 bits: forging one
/// takes 2^64 guesses, each a request).
pub(crate) const MIN_TAG_LEN: usize = 8;
/// The label the tagging key is derived under (changing it invalidates every tag).
const TAG_KEY_LABEL: &[u8] = b"wxauth tag key v1";

const NONCE_LEN: usize = 12;
const HEADER_LEN: usize = 1 + NONCE_LEN;

/// One 256-bit sealing key and its id. `Debug` never shows the key.
#[derive(Clone)]
pub struct SealingKey {
    id: u8,
    cipher: Aes256Gcm,
    tagger: Hmac<Sha256>,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealingKey {{ id: {}, key: [redacted] }}", self.id)
    }
}

impl SealingKey {
    /// Builds a key from its id and 32 raw bytes.
    pub fn new(id: u8, key: &[u8; 32]) -> Self {
        // HMAC takes keys of any length: neither `new_from_slice` can fail.
        let mut derive = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
        derive.update(TAG_KEY_LABEL);
        let tag_key = derive.finalize().into_bytes();
        let tagger = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&tag_key).expect("HMAC takes any key length");
        Self { id, cipher: Aes256Gcm::new(key.into()), tagger }
    }

    fn tag(&self, parts: &[&str]) -> Hmac<Sha256> {
        let mut mac = self.tagger.clone();
        for part in parts {
            // Length-prefixed, so ("ab", "c") and ("a", "bc") tag differently.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac
    }

    /// The key's id, written in the header of every record it seals.
    pub fn id(&self) -> u8 {
        self.id
    }
}

/// Why a keyring could not be read. Never carries key material.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyringError {
    /// No key at all.
    #[error("no sealing key configured")]
    Empty,
    /// A line is not `<id 0-255>:<base64 of 32 bytes>`.
    #[error("sealing key line {line}: expected `<id 0-255>:<base64 of 32 bytes>`")]
    Malformed {
        /// 1-based line (or comma-separated item) number.
        line: usize,
    },
    /// Two keys share an id.
    #[error("sealing key id {0} appears twice")]
    DuplicateId(u8),
}

/// The configured sealing keys; the first seals, every one opens.
#[derive(Clone, Debug)]
pub struct Keyring {
    keys: Vec<SealingKey>,
}

/// A record that could not be sealed (AES-GCM refuses only inputs beyond 64 GiB). Never
/// carries the record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("record could not be sealed")]
pub struct SealError;

/// A sealed record that does not open: wrong key, unknown key id, tampered or truncated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("sealed record does not open")]
pub struct OpenError;

impl Keyring {
    /// A keyring of the given keys; the first seals.
    pub fn new(keys: Vec<SealingKey>) -> Result<Self, KeyringError> {
        if keys.is_empty() {
            return Err(KeyringError::Empty);
        }
        for (i, key) in keys.iter().enumerate() {
            if keys[..i].iter().any(|k| k.id == key.id) {
                return Err(KeyringError::DuplicateId(key.id));
            }
        }
        Ok(Self { keys })
    }

    /// Parses `<id>:<base64 key>` items, one per line or comma-separated; blank lines and
    /// `#` comments are skipped. This is the format of the sealing-keys Secret.
    pub fn parse(text: &str) -> Result<Self, KeyringError> {
        let items =
            text.split(['\n', ',']).map(str::trim).enumerate().filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        let mut keys = Vec::new();
        for (index, item) in items {
            let malformed = KeyringError::Malformed { line: index + 1 };
            let (id, b64) = item.split_once(':').ok_or(malformed.clone())?;
            let id: u8 = id.trim().parse().map_err(|_| malformed.clone())?;
            let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).map_err(|_| malformed.clone())?;
            let raw: [u8; 32] = raw.try_into().map_err(|_| malformed)?;
            keys.push(SealingKey::new(id, &raw));
        }
        Self::new(keys)
    }

    /// The key ids, the sealing one first.
    pub fn ids(&self) -> Vec<u8> {
        self.keys.iter().map(SealingKey::id).collect()
    }

    /// A fresh random key as a keyring line, for `wxauth gen-key` and tests.
    pub fn generate_line(id: u8) -> String {
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        format!("{id}:{}", base64::engine::general_purpose::STANDARD.encode(raw))
    }

    /// Seals `plain` for storage under `name` with the first key. A failure is an error, never
    /// an empty record: an empty record would read back as missing, and the write it was for
    /// would be lost without a word.
    pub fn seal(&self, name: &str, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let payload = Payload { msg: plain, aad: name.as_bytes() };
        // AES-GCM encryption fails only for inputs beyond 64 GiB; records are kilobytes.
        let sealed = key.cipher.encrypt(&Nonce::from(nonce), payload).map_err(|_| SealError)?;
        let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
        out.push(key.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// A 128-bit tag of `parts` under the sealing key's tagging key.
    pub fn tag(&self, parts: &[&str]) -> [u8; TAG_LEN] {
        let full = self.keys[0].tag(parts).finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    /// The 128-bit tag of `parts` under every configured key, the sealing key's first: what an
    /// index keyed by a tag (the phone-number index) is written under (the first) and looked
    /// up and cleaned under (all, so entries written before a key rotation are still found).
    pub fn tags_under_each(&self, parts: &[&str]) -> Vec<[u8; TAG_LEN]> {
        let tag_of = |key: &SealingKey| {
            let full = key.tag(parts).finalize().into_bytes();
            let mut tag = [0u8; TAG_LEN];
            tag.copy_from_slice(&full[..TAG_LEN]);
            tag
        };
        self.keys.iter().map(tag_of).collect()
    }

    /// Whether `tag` is the tag of `parts` under any configured key (constant-time compare),
    /// so tags made before a key rotation still verify while the old key is configured. `tag`
    /// may be a leading part of the 128-bit tag, down to [`MIN_TAG_LEN`] bytes (flow ids carry
    /// two 64-bit tags).
    pub fn verify_tag(&self, parts: &[&str], tag: &[u8]) -> bool {
        (MIN_TAG_LEN..=TAG_LEN).contains(&tag.len())
            && self.keys.iter().any(|key| key.tag(parts).verify_truncated_left(tag).is_ok())
    }

    /// Opens a record sealed under `name` with whichever configured key sealed it.
    pub fn open(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < HEADER_LEN + 16 {
            return Err(OpenError);
        }
        let key = self.keys.iter().find(|k| k.id == sealed[0]).ok_or(OpenError)?;
        let nonce = Nonce::try_from(&sealed[1..HEADER_LEN]).map_err(|_| OpenError)?;
        let payload = Payload { msg: &sealed[HEADER_LEN..], aad: name.as_bytes() };
        key.cipher.decrypt(&nonce, payload).map_err(|_| OpenError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(lines: &[String]) -> Keyring {
        Keyring::parse(&lines.join("\n")).expect("valid keyring")
    }

    #[test]
    fn a_sealed_record_opens_under_its_own_name() {
        let keys = ring(&[Keyring::generate_line(1)]);
        let sealed = keys.seal("wxauth:mp:tok:o1", b"record").expect("sealed");
        assert_eq!(keys.open("wxauth:mp:tok:o1", &sealed), Ok(b"record".to_vec()));
        assert!(!sealed.windows(6).any(|w| w == b"record"));
    }

    #[test]
    fn a_record_copied_under_another_name_does_not_open() {
        let keys = ring(&[Keyring::generate_line(1)]);
        let sealed = keys.seal("wxauth:mp:tok:o1", b"record").expect("sealed");
        assert_eq!(keys.open("wxauth:mp:tok:o2", &sealed), Err(OpenError));
    }

    #[test]
    fn a_tampered_or_truncated_record_does_not_open() {
        let keys = ring(&[Keyring::generate_line(1)]);
        let mut sealed = keys.seal("k", b"record").expect("sealed");
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert_eq!(keys.open("k", &sealed), Err(OpenError));
        assert_eq!(keys.open("k", &sealed[..10]), Err(OpenError));
        assert_eq!(keys.open("k", b""), Err(OpenError));
    }

    #[test]
    fn rotation_seals_with_the_first_key_and_opens_with_any() {
        let (old, new) = (Keyring::generate_line(1), Keyring::generate_line(2));
        let before = ring(std::slice::from_ref(&old));
        let after = ring(&[new.clone(), old]);
        let sealed_before = before.seal("k", b"v1").expect("sealed");
        let sealed_after = after.seal("k", b"v2").expect("sealed");
        assert_eq!(sealed_after[0], 2);
        assert_eq!(after.open("k", &sealed_before), Ok(b"v1".to_vec()));
        assert_eq!(before.open("k", &sealed_after), Err(OpenError));
        assert_eq!(ring(&[new]).open("k", &sealed_before), Err(OpenError));
    }

    #[test]
    fn malformed_keyrings_are_refused_without_echoing_key_material() {
        assert_eq!(Keyring::parse("").map(|_| ()), Err(KeyringError::Empty));
        assert_eq!(Keyring::parse("1:c2hvcnQ=").map(|_| ()), Err(KeyringError::Malformed { line: 1 }));
        let line = Keyring::generate_line(3);
        assert_eq!(Keyring::parse(&format!("{line}\n{line}")).map(|_| ()), Err(KeyringError::DuplicateId(3)));
        let err = Keyring::parse("300:abc").map(|_| ()).unwrap_err().to_string();
        assert!(!err.contains("abc"));
    }
}
