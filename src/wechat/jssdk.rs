//! The JS-SDK's `wx.config` signature (JS-SDK说明文档, 附录1 "JS-SDK使用权限签名算法"): SHA-1 of
//! `jsapi_ticket=..&noncestr=..&timestamp=..&url=..` (the four fields in that order, their
//! names in lowercase, the values as they are: no URL-escaping), the URL being the page's own
//! without its `#` fragment. Facts and the published sample: docs/wechat.md.

use sha1::{Digest as _, Sha1};

/// The signature `wx.config` checks, as lowercase hex.
pub fn jssdk_signature(jsapi_ticket: &str, nonce_str: &str, timestamp: i64, url: &str) -> String {
    // "url（当前网页的URL，不包含#及其后面部分）": a caller that left the fragment on gets it cut here.
    let url = url.split('#').next().unwrap_or(url);
    // Hashed piece by piece: the same bytes as the documented string, without building it.
    let mut sha1 = Sha1::new();
    for piece in ["jsapi_ticket=", jsapi_ticket, "&noncestr=", nonce_str, "&timestamp="] {
        sha1.update(piece.as_bytes());
    }
    sha1.update(timestamp.to_string().as_bytes());
    sha1.update(b"&url=");
    sha1.update(url.as_bytes());
    hex::encode(sha1.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// WeChat's own sample (附录1): its ticket, noncestr, timestamp and url give its signature.
    #[test]
    fn wechats_published_sample_signs_as_published() {
        let ticket = "sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg";
        let signature =
            jssdk_signature(ticket, "Wm3WZYTPz0wzccnW", 1_414_587_457, "http://mp.weixin.qq.com?params=value");
        assert_eq!(signature, "0f9de62fce790f9a083d5c99e95740ceb90c27ed");
    }

    #[test]
    fn the_fragment_is_not_signed() {
        let with = jssdk_signature("t", "n", 1, "https://a.example/p?q=1#section");
        assert_eq!(with, jssdk_signature("t", "n", 1, "https://a.example/p?q=1"));
        assert_ne!(with, jssdk_signature("t", "n", 1, "https://a.example/p?q=2"));
    }
}
