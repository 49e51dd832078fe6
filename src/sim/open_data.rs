//! A mini program's open data as WeChat's client makes it (开放数据校验与解密): the JSON a
//! button or API gives, with a `watermark` `{appid, timestamp}`, AES-128-CBC encrypted with the
//! user's current session key (the last `jscode2session`'s) and a random IV, PKCS#7 padded,
//! both base64. The service decrypts on its own (`wechat::decrypt_open_data`).

use aes::cipher::{BlockModeEncrypt as _, KeyIvInit as _, block_padding::NoPadding};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::Rng as _;
use serde_json::{Value, json};

use super::Simulator;

impl Simulator {
    /// `data` as the mini program's client hands it over for `user` in `appid`: its
    /// `(encryptedData, iv)`, with the watermark added. `None` when the user never signed in to
    /// the mini program (there is no session key to make it with).
    pub fn encrypted_data(&self, appid: &str, user: &str, mut data: Value) -> Option<(String, String)> {
        let key: [u8; 16] = STANDARD.decode(self.core().session_key(appid, user)?).ok()?.try_into().ok()?;
        data["watermark"] = json!({ "appid": appid, "timestamp": self.core().unix_now() });
        let iv: [u8; 16] = rand::rng().random();
        let mut plain = serde_json::to_vec(&data).ok()?;
        let pad = 16 - plain.len() % 16;
        plain.extend(std::iter::repeat_n(u8::try_from(pad).ok()?, pad));
        let len = plain.len();
        let encryptor = cbc::Encryptor::<aes::Aes128>::new_from_slices(&key, &iv).ok()?;
        let encrypted = encryptor.encrypt_padded::<NoPadding>(&mut plain, len).ok()?;
        Some((STANDARD.encode(encrypted), STANDARD.encode(iv)))
    }
}
