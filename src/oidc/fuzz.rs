//! The provider's request parsers over fixed clients, for the fuzz targets `oidc_authorize` and
//! `oidc_token` (`crate::fuzzing`, docs/fuzzing.md): the code the endpoints run, without a store.

use std::collections::BTreeSet;

use sha2::{Digest as _, Sha256};

use super::records::{Code, Identity};
use super::{Params, authorize, token};
use crate::config::{ClientAuth, OidcClient, Subject};

/// The confidential client of the fixtures: `client_secret_basic`, secret `s3cret`, PKCE.
pub(crate) const CLIENT: &str = "rp";
/// Its one redirect URI.
pub(crate) const REDIRECT_URI: &str = "https://rp.example.com/cb";
/// The PKCE verifier of the fixture code (RFC 7636 appendix B's).
pub(crate) const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
/// The public client of the fixtures: `none`, PKCE.
pub(crate) const PUBLIC_CLIENT: &str = "spa";

fn clients() -> Vec<OidcClient> {
    let client = |id: &str, auth| OidcClient {
        id: id.to_owned(),
        redirect_uris: vec![REDIRECT_URI.to_owned()],
        post_logout_redirect_uris: Vec::new(),
        auth,
        apps: vec!["mp".to_owned()],
        scopes: BTreeSet::from(["openid".to_owned(), "profile".to_owned()]),
        require_pkce: true,
        subject: Subject::Pairwise { sector: id.to_owned() },
        wechat_ids: false,
        max_open_flows: 1,
        id_token_alg: crate::oidc::Alg::Rs256,
        limits: crate::config::OidcLimits::default(),
    };
    vec![
        client(CLIENT, ClientAuth::SecretBasic(Sha256::digest(b"s3cret").into())),
        client(PUBLIC_CLIENT, ClientAuth::None),
    ]
}

/// An authorization request's query as `/oidc/authorize` judges it for the fixture client:
/// `Err("page")` when it cannot answer the client at all, `Err(error)` for an error sent to the
/// redirect URI, else the PKCE challenge and the scopes granted.
pub(crate) fn authorize(query: &[u8]) -> Result<(Option<String>, Vec<String>), &'static str> {
    let params = Params::parse(query).ok_or("page")?;
    let clients = clients();
    let client = clients.iter().find(|c| Some(c.id.as_str()) == params.get("client_id")).ok_or("page")?;
    if params.get("redirect_uri") != Some(REDIRECT_URI) {
        return Err("page");
    }
    authorize::judge(client, &params)
}

/// A token request (its `Authorization` header and form body) as `/oidc/token` judges it, as if
/// its code were a live fixture code issued to [`CLIENT`] for [`REDIRECT_URI`] with the
/// challenge of [`VERIFIER`].
pub(crate) fn token(authorization: Option<&str>, body: &[u8]) -> Result<(), &'static str> {
    use base64::Engine as _;
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(VERIFIER.as_bytes()));
    let identity = Identity {
        sub: "s".into(),
        auth_time: 0,
        scopes: Vec::new(),
        name: None,
        picture: None,
        openid: None,
        unionid: None,
    };
    let code = Code {
        client: CLIENT.into(),
        redirect_uri: REDIRECT_URI.into(),
        challenge: Some(challenge),
        nonce: None,
        expires_at_ms: 2,
        identity,
        used_for: None,
    };
    token::judge(&clients(), authorization, body, &code, 1)
}
