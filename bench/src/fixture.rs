//! The names the harness, the simulator's demo apps and the wxauth config it generates agree
//! on: the apps, the client, the users, the callback host.

/// The simulator's demo official-account app, which wxauth's app `mp` is configured as.
pub const MP_APPID: &str = "wxd0000000000000a1";
pub const MP_SECRET: &str = "demo-mp-secret";
pub const APP: &str = "mp";
/// The simulator's demo mini program, which wxauth's app `mini` is configured as.
pub const MINI_APPID: &str = "wxd0000000000000d4";
pub const MINI_SECRET: &str = "demo-mini-secret";
/// The two simulator users whose tokens the per-user RPCs read.
pub const USERS: [&str; 2] = ["alice", "bob"];
pub const CLIENT_KEY: &str = "bench-client-key";
pub const RETURN_URL: &str = "https://passport.example.com/login/callback?from=bench";
/// A product's CSRF state, 32 characters as a typical session-bound value.
pub const CALLER_STATE: &str = "Ks8dP2qLx0Vn4RtY7uWb1ZcE5gHj9mAo";
/// The start of the code WeChat would append at the callback: the relay binds each code to
/// its flow, so each callback carries its own (this prefix and the flow id).
pub const RELAY_CODE: &str = "061Bench";
pub const CALLBACK_HOST: &str = "auth.wxauth.bench";
/// A page of the client's own (under its return URL pattern) that `SignJsSdkConfig` signs; the
/// fragment is cut off before signing, as WeChat's JS-SDK expects.
pub const JSSDK_URL: &str = "https://passport.example.com/login/share?item=42&from=bench#top";
/// The OpenID Connect relying party of the generated config: confidential
/// (`client_secret_basic`), PKCE required, app `mp` (the official account: the bench's browser
/// says it is WeChat's).
pub const OIDC_CLIENT: &str = "bench-rp";
pub const OIDC_SECRET: &str = "bench-rp-secret";
pub const OIDC_REDIRECT: &str = "https://rp.example.com/oauth2/callback";
/// The PKCE verifier of every bench sign-in (RFC 7636 Appendix B's), and its S256 challenge.
pub const PKCE_VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
pub const PKCE_CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
/// The repository's test signing key (RSA 2048): the provider signs the bench's ID tokens with
/// it, and the bench times `SigningKey::sign` with it.
pub const OIDC_KEY_ID: &str = "bench";
pub const OIDC_KEY_PEM: &str = include_str!("../../tests/fixtures/oidc/current.pem");
/// The relying party registered for ES256 ID tokens (`id_token_signed_response_alg`), otherwise
/// as [`OIDC_CLIENT`] (its secret and redirect URI).
pub const OIDC_ES256_CLIENT: &str = "bench-rp-es256";
/// The repository's test EC P-256 key: the provider signs the ES256 client's ID tokens with it.
pub const OIDC_EC_KEY_ID: &str = "bench-ec";
pub const OIDC_EC_KEY_PEM: &str = include_str!("../../tests/fixtures/oidc/ec-current.pem");
/// WeChat's in-app browser on Android, so `/oidc/authorize` picks the official account.
pub const WECHAT_UA: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) \
     Version/4.0 Chrome/120.0 Mobile Safari/537.36 MicroMessenger/8.0.47.2560(0x28002F30) NetType/WIFI Language/zh_CN";
