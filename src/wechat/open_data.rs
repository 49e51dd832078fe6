//! A mini program's open data (开放数据校验与解密): `encryptedData` from a button or an API
//! (`wx.getUserInfo`, `getWeRunData`, the older phone-number button, ...) is AES-128-CBC with
//! PKCS#7 padding, the key the base64 of the user's `session_key` (16 bytes), the IV the base64
//! `iv` that came with it; the plaintext is JSON whose `watermark.appid` names the mini program
//! it was made for. Facts and WeChat's published sample: docs/wechat.md.

use aes::cipher::{BlockModeDecrypt as _, KeyIvInit as _, block_padding::NoPadding};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Why open data was refused; never says anything of the key or the plaintext.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenDataError {
    /// `encrypted_data` or `iv` is not standard base64 of whole AES blocks (`iv`: one block).
    #[error("not base64 of whole AES blocks")]
    Form,
    /// It does not decrypt to JSON with the user's session key: another key made it (a newer
    /// `wx.login()` replaced the session), or it was altered.
    #[error("does not decrypt with the user's session key")]
    Undecryptable,
    /// It decrypts, but its watermark names another mini program (or none).
    #[error("its watermark is another app's")]
    OtherApp,
}

/// Decrypts `encrypted_data` with the user's `session_key` and checks that its watermark names
/// `appid`; the JSON it held.
pub fn decrypt_open_data(
    session_key: &str,
    encrypted_data: &str,
    iv: &str,
    appid: &str,
) -> Result<serde_json::Value, OpenDataError> {
    let block = |b64: &str| -> Option<[u8; 16]> { STANDARD.decode(b64).ok()?.try_into().ok() };
    let key = block(session_key).ok_or(OpenDataError::Undecryptable)?;
    let iv = block(iv).ok_or(OpenDataError::Form)?;
    let mut buf = STANDARD.decode(encrypted_data).map_err(|_| OpenDataError::Form)?;
    if buf.is_empty() || buf.len() % 16 != 0 {
        return Err(OpenDataError::Form);
    }
    let decryptor =
        cbc::Decryptor::<aes::Aes128>::new_from_slices(&key, &iv).map_err(|_| OpenDataError::Undecryptable)?;
    let plain = decryptor.decrypt_padded::<NoPadding>(&mut buf).map_err(|_| OpenDataError::Undecryptable)?;
    // PKCS#7: n bytes of value n, 1..=16. A wrong key leaves noise here (and in the JSON).
    let pad = usize::from(*plain.last().ok_or(OpenDataError::Undecryptable)?);
    let body = plain.len().checked_sub(pad).filter(|_| (1..=16).contains(&pad)).ok_or(OpenDataError::Undecryptable)?;
    if plain[body..].iter().any(|&b| usize::from(b) != pad) {
        return Err(OpenDataError::Undecryptable);
    }
    let json: serde_json::Value = serde_json::from_slice(&plain[..body]).map_err(|_| OpenDataError::Undecryptable)?;
    if json.pointer("/watermark/appid").and_then(serde_json::Value::as_str) != Some(appid) {
        return Err(OpenDataError::OtherApp);
    }
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    const APPID: &str = "wx4f4bc4dec97d474b";
    const SESSION_KEY: &str = "tiihtNczf5v6AKRyjwEUhQ==";
    const IV: &str = "r7BXXKkLb8qrSNn05n0qiA==";
    /// WeChat's own sample (the `WXBizDataCrypt` demo of 开放数据校验与解密, in every language it
    /// ships; replayed by many SDKs' tests).
    const ENCRYPTED: &str = "CiyLU1Aw2KjvrjMdj8YKliAjtP4gsMZMQmRzooG2xrDcvSnxIMXFufNstNGTyaGS9uT5geRa0W4oTOb1WT7fJlAC+oNPdbB+3hVbJSRgv+4lGOETKUQz6OYStslQ142dNCuabNPGBzlooOmB231qMM85d2/fV6ChevvXvQP8Hkue1poOFtnEtpyxVLW1zAo6/1Xx1COxFvrc2d7UL/lmHInNlxuacJXwu0fjpXfz/YqYzBIBzD6WUfTIF9GRHpOn/Hz7saL8xz+W//FRAUid1OksQaQx4CMs8LOddcQhULW4ucetDf96JcR3g0gfRK4PC7E/r7Z6xNrXd2UIeorGj5Ef7b1pJAYB6Y5anaHqZ9J6nKEBvB4DnNLIVWSgARns/8wR2SiRS7MNACwTyrGvt9ts8p12PKFdlqYTopNHR1Vf7XjfhQlVsAJdNiKdYmYVoKlaRv85IfVunYzO0IKXsyl7JCUjCpoG20f0a04COwfneQAGGwd5oa+T8yO5hzuyDb/XcxxmK01EpqOyuxINew==";

    #[test]
    fn wechats_published_sample_decrypts_to_its_user_and_watermark() {
        let data = decrypt_open_data(SESSION_KEY, ENCRYPTED, IV, APPID).expect("decrypts");
        assert_eq!(data["openId"], "oGZUI0egBJY1zhBYw2KhdUfwVJJE");
        assert_eq!(data["nickName"], "Band");
        assert_eq!(data["unionId"], "ocMvos6NjeKLIBqg5Mr9QjxrP1FA");
        assert_eq!(data["watermark"]["timestamp"], 1_477_314_187);
    }

    #[test]
    fn another_apps_data_another_key_or_a_mangled_body_is_refused() {
        assert_eq!(decrypt_open_data(SESSION_KEY, ENCRYPTED, IV, "wx0000000000000000"), Err(OpenDataError::OtherApp));
        let other_key = "AAAAAAAAAAAAAAAAAAAAAA==";
        assert_eq!(decrypt_open_data(other_key, ENCRYPTED, IV, APPID), Err(OpenDataError::Undecryptable));
        assert_eq!(decrypt_open_data(SESSION_KEY, &ENCRYPTED[4..], IV, APPID), Err(OpenDataError::Form));
        assert_eq!(decrypt_open_data(SESSION_KEY, ENCRYPTED, "short", APPID), Err(OpenDataError::Form));
    }
}
