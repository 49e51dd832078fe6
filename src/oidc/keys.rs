//! The provider's signing keys: RSA (RS256, OpenID Connect Core §15.1's mandatory algorithm)
//! from PKCS#8 or PKCS#1 PEM, each named by its `kid`; the compact JWS of an ID token, the JWK
//! of each key for the JWKS, and the check of an ID token wxauth itself signed (the end-session
//! endpoint's `id_token_hint`). ring does the RSA (it is the tree's one crypto provider already).

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, RsaKeyPair};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer};

/// The dev mode's signing key (docs/design.md §8): in the repository, so never a secret; the
/// production config refuses it ([`SigningKey::is_dev_key`]).
#[cfg(feature = "dev")]
pub const DEV_SIGNING_KEY_PEM: &str = include_str!("dev-signing-key.pem");

/// The kid of the dev mode's key.
#[cfg(feature = "dev")]
pub const DEV_SIGNING_KEY_ID: &str = "wxauth-dev";

/// SHA-256 of the dev key's modulus (big-endian, no leading zeros): compiled into every build,
/// so a production binary (without the `dev` feature and the key itself) still refuses it.
/// `openssl rsa -in src/oidc/dev-signing-key.pem -noout -modulus | cut -d= -f2 | xxd -r -p |
/// sha256sum`; the unit test `the_dev_keys_fingerprint_is_its_modulus_hash` holds it to the key.
const DEV_KEY_MODULUS_SHA256: &str = "cb01e2a0d541c0ae6db5aa9f5abbb91de4bc45e0e9895e4908ffc70913c2a980";

/// One RSA signing key and its `kid`. `Debug` shows the kid only.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    pair: Arc<RsaKeyPair>,
    /// Its public modulus and exponent, big-endian (the JWK's `n` and `e`).
    public: Arc<signature::RsaPublicKeyComponents<Vec<u8>>>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// The key in `pem` (`PRIVATE KEY`: PKCS#8, or `RSA PRIVATE KEY`: PKCS#1), named `kid`.
    /// The error says what is wrong without any of the key.
    pub fn from_pem(kid: &str, pem: &str) -> Result<Self, String> {
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| "not a PEM private key".to_owned())?;
        let pair = match der {
            PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(PrivatePkcs8KeyDer::secret_pkcs8_der(&der)),
            PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(PrivatePkcs1KeyDer::secret_pkcs1_der(&der)),
            _ => return Err("an RSA private key (PKCS#8 or PKCS#1) is required for RS256".into()),
        };
        let pair = pair.map_err(|e| format!("not a usable RSA key ({e})"))?;
        if pair.public().modulus_len() < 256 {
            return Err("RSA keys of at least 2048 bits".into());
        }
        let public = signature::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
        Ok(Self { kid: kid.to_owned(), pair: Arc::new(pair), public: Arc::new(public) })
    }

    /// The dev mode's key.
    #[cfg(feature = "dev")]
    pub fn dev() -> Result<Self, String> {
        Self::from_pem(DEV_SIGNING_KEY_ID, DEV_SIGNING_KEY_PEM)
    }

    /// Whether this is the dev mode's key (the same modulus), which production refuses.
    pub fn is_dev_key(&self) -> bool {
        self.modulus_sha256() == DEV_KEY_MODULUS_SHA256
    }

    /// Its `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The hex SHA-256 of its modulus.
    fn modulus_sha256(&self) -> String {
        hex::encode(ring::digest::digest(&ring::digest::SHA256, &self.public.n))
    }

    /// Its public JWK (RFC 7517 §4, RFC 7518 §6.3.1): `n` and `e` base64url.
    pub fn jwk(&self) -> serde_json::Value {
        let public = &self.public;
        serde_json::json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(&public.n),
            "e": URL_SAFE_NO_PAD.encode(&public.e),
        })
    }

    /// The compact JWS (RFC 7515 §7.1) of `claims`, RS256, with this key's `kid` in the header.
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, ring::error::Unspecified> {
        let header = serde_json::json!({ "alg": "RS256", "typ": "JWT", "kid": self.kid });
        let mut jws =
            [URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string())].join(".");
        let mut signature = vec![0; self.pair.public().modulus_len()];
        self.pair.sign(&signature::RSA_PKCS1_SHA256, &SystemRandom::new(), jws.as_bytes(), &mut signature)?;
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(jws)
    }

    /// The claims of `jws` if this key signed it (RS256); no other check (expiry, audience).
    pub fn verify(&self, jws: &str) -> Option<serde_json::Value> {
        let (signed, signature) = jws.rsplit_once('.')?;
        let (header, claims) = signed.split_once('.')?;
        let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        if header["alg"] != "RS256" || header["kid"] != self.kid.as_str() {
            return None;
        }
        let public = signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, self.pair.public());
        public.verify(signed.as_bytes(), &URL_SAFE_NO_PAD.decode(signature).ok()?).ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()
    }
}

#[cfg(all(test, feature = "dev"))]
mod tests {
    use super::*;

    #[test]
    fn the_dev_keys_fingerprint_is_its_modulus_hash() {
        let dev = SigningKey::dev().expect("dev key");
        assert_eq!(dev.modulus_sha256(), DEV_KEY_MODULUS_SHA256);
        let other = SigningKey::from_pem("other", include_str!("../../tests/fixtures/oidc/previous.pem")).expect("key");
        assert_ne!(other.modulus_sha256(), DEV_KEY_MODULUS_SHA256);
    }

    #[test]
    fn a_signed_token_verifies_under_its_key_only() {
        let key = SigningKey::dev().expect("dev key");
        let other = SigningKey::from_pem("other", include_str!("../../tests/fixtures/oidc/previous.pem")).expect("key");
        let jws = key.sign(&serde_json::json!({ "sub": "x" })).expect("signs");
        assert_eq!(key.verify(&jws).expect("verifies")["sub"], "x");
        assert!(other.verify(&jws).is_none(), "another key's kid and signature");
        let tampered = jws.replacen('.', ".e30", 1);
        assert!(key.verify(&tampered).is_none());
        assert!(key.is_dev_key() && !other.is_dev_key());
    }

    #[test]
    fn a_key_that_is_not_rsa_or_not_pem_is_refused_without_its_content() {
        let refused = SigningKey::from_pem("k", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        assert!(refused.is_err());
        assert_eq!(SigningKey::from_pem("k", "secret").expect_err("no pem"), "not a PEM private key");
    }
}
