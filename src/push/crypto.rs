//! WeChat's message-push signatures and the safe mode's decryption (消息加解密), as WeChat's
//! own sample code (`WXBizMsgCrypt`) does them (docs/design.md §10.8):
//! - `signature` = hex SHA-1 of the Token, `timestamp` and `nonce`, sorted and joined;
//!   `msg_signature` the same with the `Encrypt` text as a fourth part;
//! - the AES key is the base64 of the 43-character EncodingAESKey and one `=` (32 bytes), the
//!   IV its first 16 bytes; AES-256-CBC, PKCS#7 padding to a multiple of **32** bytes;
//! - the plaintext is 16 random bytes, the message's length (4 bytes, network order), the
//!   message, and the appid it was meant for.
//!
//! wxauth only verifies and decrypts; the simulator (`src/sim/push.rs`) encrypts on its own.

use aes::cipher::{BlockModeDecrypt as _, KeyIvInit as _, block_padding::NoPadding};
use base64::Engine as _;
use base64::alphabet::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use sha1::{Digest as _, Sha1};

/// Standard base64 that, like WeChat's samples (Python's `b64decode`, Java's decoder), keeps
/// the bits after the last whole byte whatever they are: an EncodingAESKey is 43 random
/// characters, whose last one carries 4 bits beyond the 32 bytes.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// WeChat pads to multiples of 32 bytes (its samples' `PKCS7Encoder`, block size 32).
const PAD_BLOCK: usize = 32;

/// The AES key of an EncodingAESKey: 43 letters or digits, base64 of 32 bytes without its `=`.
pub fn aes_key(encoding_aes_key: &str) -> Option<[u8; 32]> {
    if encoding_aes_key.len() != 43 || !encoding_aes_key.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    LENIENT.decode([encoding_aes_key, "="].concat()).ok()?.try_into().ok()
}

/// The signature of `parts` (the Token, `timestamp`, `nonce`, and for `msg_signature` the
/// `Encrypt` text): sorted, joined, SHA-1, lower-case hex.
pub fn signature(parts: &[&str]) -> String {
    let mut sorted = parts.to_vec();
    sorted.sort_unstable();
    hex::encode(Sha1::digest(sorted.concat().as_bytes()))
}

/// Whether `given` is the signature of `parts`. Compared without an early exit, so the time
/// taken does not tell how much of a forged signature was right.
pub fn signature_matches(given: &str, parts: &[&str]) -> bool {
    let expected = signature(parts);
    expected.len() == given.len() && expected.bytes().zip(given.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Why an `Encrypt` text does not decrypt to a message.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// Not base64, or not whole AES blocks of at least 32 bytes.
    #[error("not a WeChat ciphertext")]
    Form,
    /// The padding is not 1..=32 bytes.
    #[error("bad padding")]
    Padding,
    /// The length field runs past the plaintext.
    #[error("bad message length")]
    Length,
    /// The appid after the message is not text.
    #[error("bad appid")]
    AppId,
}

/// A decrypted message and the appid WeChat encrypted it for.
#[derive(Debug, PartialEq, Eq)]
pub struct Decrypted {
    /// The message (XML or JSON) as WeChat sent it.
    pub message: Vec<u8>,
    /// The appid at the end of the plaintext: the caller checks it is its own.
    pub appid: String,
}

/// Decrypts an `Encrypt` text under `key` (from [`aes_key`]).
pub fn decrypt(key: &[u8; 32], encrypt: &str) -> Result<Decrypted, DecryptError> {
    let mut buf = LENIENT.decode(encrypt.trim()).map_err(|_| DecryptError::Form)?;
    if buf.len() < PAD_BLOCK || buf.len() % 16 != 0 {
        return Err(DecryptError::Form);
    }
    let decryptor = cbc::Decryptor::<aes::Aes256>::new_from_slices(key, &key[..16]).map_err(|_| DecryptError::Form)?;
    let plain = decryptor.decrypt_padded::<NoPadding>(&mut buf).map_err(|_| DecryptError::Form)?;
    let pad = usize::from(*plain.last().ok_or(DecryptError::Form)?);
    if !(1..=PAD_BLOCK).contains(&pad) || pad > plain.len() {
        return Err(DecryptError::Padding);
    }
    let content = &plain[..plain.len() - pad];
    let header = content.get(16..20).ok_or(DecryptError::Length)?;
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let end = usize::try_from(len).ok().and_then(|len| 20usize.checked_add(len)).ok_or(DecryptError::Length)?;
    let message = content.get(20..end).ok_or(DecryptError::Length)?.to_vec();
    let appid = std::str::from_utf8(&content[end..]).map_err(|_| DecryptError::AppId)?.to_owned();
    Ok(Decrypted { message, appid })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// WeChat's own sample of the safe mode (the `WXBizMsgCrypt` demo, `Sample.py`, 2014, in
    /// every language WeChat ships it; replayed by SDKs such as pywe-sign's
    /// `test_msg_signature_relative` and wechatpy's examples): Token `spamtest`, the
    /// EncodingAESKey below, appid `wx2c2769f8efd9abc2`, and a message WeChat encrypted.
    const SAMPLE_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    const SAMPLE_ENCRYPT: &str = "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE=";

    #[test]
    fn wechats_own_sample_verifies_and_decrypts() {
        let parts = ["spamtest", "1409735669", "1320562132", SAMPLE_ENCRYPT];
        assert!(signature_matches("5d197aaffba7e9b25a30732f161a50dee96bd5fa", &parts));
        let key = aes_key(SAMPLE_KEY).expect("the sample key");
        let decrypted = decrypt(&key, SAMPLE_ENCRYPT).expect("decrypts");
        assert_eq!(decrypted.appid, "wx2c2769f8efd9abc2");
        let message = String::from_utf8(decrypted.message).expect("utf-8");
        assert!(message.starts_with("<xml>") && message.ends_with("</xml>"), "{message}");
        // The sample's own plaintext: the message its envelope's other fields repeat.
        assert!(message.contains("<ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>"), "{message}");
        assert!(message.contains("<Content><![CDATA[abcdteT]]></Content>"), "{message}");
        assert!(message.contains("<MsgId>6054768590064713728</MsgId>"), "{message}");
    }

    /// wechatpy's `tests/test_crypto.py` (`CryptoTestCase.test_decrypt_message`): the same
    /// scheme as WeCom uses it (the corp id in the appid's place), a second published vector.
    #[test]
    fn wechatpys_vector_verifies_and_decrypts() {
        let encrypt = "RgqEoJj5A4EMYlLvWO1F86ioRjZfaex/gePD0gOXTxpsq5Yj4GNglrBb8I2BAJVODGajiFnXBu7mCPatfjsu6IHCrsTyeDXzF6Bv283dGymzxh6ydJRvZsryDyZbLTE7rhnus50qGPMfp2wASFlzEgMW9z1ef/RD8XzaFYgm7iTdaXpXaG4+BiYyolBug/gYNx410cvkKR2/nPwBiT+P4hIiOAQqGp/TywZBtDh1yCF2KOd0gpiMZ5jSw3e29mTvmUHzkVQiMS6td7vXUaWOMZnYZlF3So2SjHnwh4jYFxdgpkHHqIrH/54SNdshoQgWYEvccTKe7FS709/5t6NMxuGhcUGAPOQipvWTT4dShyqio7mlsl5noTrb++x6En749zCpQVhDpbV6GDnTbcX2e8K9QaNWHp91eBdCRxthuL0=";
        assert!(signature_matches(
            "74d92dfeb87ba7c714f89d98870ae5eb62dff26d",
            &["123456", "1411525903", "461056294", encrypt]
        ));
        let key = aes_key("kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR").expect("key");
        let decrypted = decrypt(&key, encrypt).expect("decrypts");
        assert_eq!(decrypted.appid, "wx49f0ab532d5d035a");
        let message = String::from_utf8(decrypted.message).expect("utf-8");
        assert!(message.contains("<Content><![CDATA[test]]></Content>"), "{message}");
        assert!(message.contains("<FromUserName><![CDATA[messense]]></FromUserName>"), "{message}");
    }

    /// pywe-sign's `test_callback_signature_relative`: Token `789`, timestamp `456`, nonce `123`.
    #[test]
    fn the_plain_signature_is_sha1_of_the_sorted_parts() {
        assert_eq!(signature(&["789", "456", "123"]), "f7c3bc1d808e04732adf679965ccc34ca7ae3441");
        assert!(signature_matches("f7c3bc1d808e04732adf679965ccc34ca7ae3441", &["123", "789", "456"]));
        assert!(!signature_matches("f7c3bc1d808e04732adf679965ccc34ca7ae3442", &["123", "789", "456"]));
        assert!(!signature_matches("F7C3BC1D808E04732ADF679965CCC34CA7AE3441", &["123", "789", "456"]));
        assert!(!signature_matches("", &["123", "789", "456"]));
    }

    #[test]
    fn a_tampered_or_foreign_ciphertext_does_not_decrypt_to_the_sample() {
        let key = aes_key(SAMPLE_KEY).expect("key");
        let other = aes_key("kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR").expect("key");
        // Another key yields garbage: refused, or at best another "appid" (which the caller checks).
        assert!(!matches!(decrypt(&other, SAMPLE_ENCRYPT), Ok(d) if d.appid == "wx2c2769f8efd9abc2"));
        for bad in ["", "not base64!", "AAAA", &SAMPLE_ENCRYPT[..SAMPLE_ENCRYPT.len() - 8]] {
            assert!(decrypt(&key, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn encoding_aes_keys_are_43_letters_or_digits() {
        assert!(aes_key(SAMPLE_KEY).is_some());
        assert!(aes_key(&SAMPLE_KEY[..42]).is_none());
        assert!(aes_key(&[SAMPLE_KEY, "A"].concat()).is_none());
        assert!(aes_key("abcdefghijklmnopqrstuvwxyz0123456789ABCDE+G").is_none());
    }
}
