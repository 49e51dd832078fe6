//! The provider's signing keys: RSA (RS256, OpenID Connect Core §15.1's mandatory algorithm)
//! from PKCS#8 or PKCS#1 PEM, and EC P-256 (ES256, RFC 7518 §3.4, for clients registered with
//! `id_token_signed_response_alg = "ES256"`) from PKCS#8 PEM, each named by its `kid`; the
//! compact JWS of an ID token, the JWK of each key for the JWKS, and the check of an ID token
//! wxauth itself signed (the end-session endpoint's `id_token_hint`). ring does the RSA and the
//! ECDSA (it is the tree's one crypto provider already).

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer};

/// The dev mode's signing key (docs/design.md §8): in the repository, so never a secret; the
/// production config refuses it ([`SigningKey::is_dev_key`]).
#[cfg(feature = "dev")]
pub const DEV_SIGNING_KEY_PEM: &str = include_str!("dev-signing-key.pem");

/// The kid of the dev mode's key.
#[cfg(feature = "dev")]
pub const DEV_SIGNING_KEY_ID: &str = "wxauth-dev";

/// The dev mode's EC P-256 key (ES256), in the repository like [`DEV_SIGNING_KEY_PEM`].
#[cfg(feature = "dev")]
pub const DEV_ES256_KEY_PEM: &str = include_str!("dev-es256-key.pem");

/// The kid of the dev mode's EC key.
#[cfg(feature = "dev")]
pub const DEV_ES256_KEY_ID: &str = "wxauth-dev-es256";

/// SHA-256 of the dev key's modulus (big-endian, no leading zeros): compiled into every build,
/// so a production binary (without the `dev` feature and the key itself) still refuses it.
/// `openssl rsa -in src/oidc/dev-signing-key.pem -noout -modulus | cut -d= -f2 | xxd -r -p |
/// sha256sum`; the unit test `the_dev_keys_fingerprint_is_its_modulus_hash` holds it to the key.
const DEV_KEY_MODULUS_SHA256: &str = "cb01e2a0d541c0ae6db5aa9f5abbb91de4bc45e0e9895e4908ffc70913c2a980";

/// SHA-256 of the dev EC key's uncompressed public point (`04 || x || y`, 65 bytes), compiled
/// into every build like [`DEV_KEY_MODULUS_SHA256`]. `openssl pkey -in
/// src/oidc/dev-es256-key.pem -pubout -outform DER | tail -c 65 | sha256sum`; the unit test
/// `the_dev_ec_keys_fingerprint_is_its_point_hash` holds it to the key.
const DEV_EC_KEY_POINT_SHA256: &str = "042c754cd2a142e12d40251f4405d80bd1098baafb135fd6329ac8ed2bbb4f4b";

/// The JWS algorithm of an ID token (RFC 7518 §3.1): what a client registers as its
/// `id_token_signed_response_alg` (OpenID Connect Dynamic Client Registration §2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256: OpenID Connect Core §15.1's mandatory algorithm, the default.
    #[default]
    Rs256,
    /// ECDSA on P-256 with SHA-256 (RFC 7518 §3.4): smaller tokens, cheaper signing.
    Es256,
}

impl Alg {
    /// Its registered name (`RS256`, `ES256`).
    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }

    /// The algorithm named `name`, of the two wxauth signs with.
    pub fn parse(name: &str) -> Option<Self> {
        [Alg::Rs256, Alg::Es256].into_iter().find(|alg| alg.name() == name)
    }
}

/// The key pair of a [`SigningKey`], with what its JWK publishes.
#[derive(Clone)]
enum Pair {
    Rsa {
        pair: Arc<RsaKeyPair>,
        /// Its public modulus and exponent, big-endian (the JWK's `n` and `e`).
        public: Arc<signature::RsaPublicKeyComponents<Vec<u8>>>,
    },
    /// Its public key is the uncompressed point `04 || x || y` (the JWK's `x` and `y`).
    Ec(Arc<EcdsaKeyPair>),
}

/// One signing key (RSA for RS256, or EC P-256 for ES256) and its `kid`. `Debug` shows the kid
/// and the algorithm only.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    pair: Pair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).field("alg", &self.alg()).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// The RSA key in `pem` (`PRIVATE KEY`: PKCS#8, or `RSA PRIVATE KEY`: PKCS#1), named `kid`.
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
        Ok(Self { kid: kid.to_owned(), pair: Pair::Rsa { pair: Arc::new(pair), public: Arc::new(public) } })
    }

    /// The EC P-256 key in `pem` (`PRIVATE KEY`: PKCS#8, as `openssl genpkey -algorithm EC
    /// -pkeyopt ec_paramgen_curve:P-256` writes it), named `kid`. The error says what is wrong
    /// without any of the key.
    pub fn from_ec_pem(kid: &str, pem: &str) -> Result<Self, String> {
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| "not a PEM private key".to_owned())?;
        let PrivateKeyDer::Pkcs8(der) = der else {
            // ring reads PKCS#8 only; `openssl pkcs8 -topk8 -nocrypt` converts a SEC1 key.
            return Err("an EC P-256 private key in PKCS#8 (`BEGIN PRIVATE KEY`) is required for ES256".into());
        };
        let pair = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_pkcs8_der(),
            &SystemRandom::new(),
        )
        .map_err(|e| format!("not a usable EC P-256 key ({e})"))?;
        Ok(Self { kid: kid.to_owned(), pair: Pair::Ec(Arc::new(pair)) })
    }

    /// The key in `pem` for `alg`: [`Self::from_pem`] or [`Self::from_ec_pem`].
    pub fn from_pem_for(alg: Alg, kid: &str, pem: &str) -> Result<Self, String> {
        match alg {
            Alg::Rs256 => Self::from_pem(kid, pem),
            Alg::Es256 => Self::from_ec_pem(kid, pem),
        }
    }

    /// The dev mode's key for `alg`.
    #[cfg(feature = "dev")]
    pub fn dev_for(alg: Alg) -> Result<Self, String> {
        match alg {
            Alg::Rs256 => Self::from_pem(DEV_SIGNING_KEY_ID, DEV_SIGNING_KEY_PEM),
            Alg::Es256 => Self::from_ec_pem(DEV_ES256_KEY_ID, DEV_ES256_KEY_PEM),
        }
    }

    /// The dev mode's RSA key.
    #[cfg(feature = "dev")]
    pub fn dev() -> Result<Self, String> {
        Self::dev_for(Alg::Rs256)
    }

    /// Whether this is one of the dev mode's keys (the same modulus or point), which
    /// production refuses.
    pub fn is_dev_key(&self) -> bool {
        let fingerprint = self.public_sha256();
        fingerprint == DEV_KEY_MODULUS_SHA256 || fingerprint == DEV_EC_KEY_POINT_SHA256
    }

    /// Its `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm it signs with.
    pub fn alg(&self) -> Alg {
        match self.pair {
            Pair::Rsa { .. } => Alg::Rs256,
            Pair::Ec(_) => Alg::Es256,
        }
    }

    /// The hex SHA-256 of its modulus (RSA) or its uncompressed public point (EC).
    fn public_sha256(&self) -> String {
        let public: &[u8] = match &self.pair {
            Pair::Rsa { public, .. } => &public.n,
            Pair::Ec(pair) => pair.public_key().as_ref(),
        };
        hex::encode(ring::digest::digest(&ring::digest::SHA256, public))
    }

    /// Its public JWK (RFC 7517 §4): RSA's `n` and `e` (RFC 7518 §6.3.1), or EC's `crv`, `x`
    /// and `y` (RFC 7518 §6.2.1: the point's coordinates, 32 bytes each for P-256), base64url.
    pub fn jwk(&self) -> serde_json::Value {
        match &self.pair {
            Pair::Rsa { public, .. } => serde_json::json!({
                "kty": "RSA",
                "use": "sig",
                "alg": "RS256",
                "kid": self.kid,
                "n": URL_SAFE_NO_PAD.encode(&public.n),
                "e": URL_SAFE_NO_PAD.encode(&public.e),
            }),
            Pair::Ec(pair) => {
                // ring's public key is the uncompressed point: 0x04, then x, then y.
                let point = pair.public_key().as_ref();
                let (x, y) = point.get(1..).unwrap_or_default().split_at(point.len().saturating_sub(1) / 2);
                serde_json::json!({
                    "kty": "EC",
                    "crv": "P-256",
                    "use": "sig",
                    "alg": "ES256",
                    "kid": self.kid,
                    "x": URL_SAFE_NO_PAD.encode(x),
                    "y": URL_SAFE_NO_PAD.encode(y),
                })
            }
        }
    }

    /// The compact JWS (RFC 7515 §7.1) of `claims` under this key's algorithm, with its `kid`
    /// in the header. ES256's signature is the fixed 64-byte `r || s` RFC 7518 §3.4 asks for
    /// (ring's `_FIXED`), not DER.
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, ring::error::Unspecified> {
        let header = serde_json::json!({ "alg": self.alg().name(), "typ": "JWT", "kid": self.kid });
        let mut jws =
            [URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string())].join(".");
        let rng = SystemRandom::new();
        let signature = match &self.pair {
            Pair::Rsa { pair, .. } => {
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &rng, jws.as_bytes(), &mut signature)?;
                signature
            }
            Pair::Ec(pair) => pair.sign(&rng, jws.as_bytes())?.as_ref().to_vec(),
        };
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(jws)
    }

    /// The claims of `jws` if this key signed it (its algorithm and kid in the header, its
    /// signature); no other check (expiry, audience).
    pub fn verify(&self, jws: &str) -> Option<serde_json::Value> {
        let (signed, signature) = jws.rsplit_once('.')?;
        let (header, claims) = signed.split_once('.')?;
        let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        if header["alg"] != self.alg().name() || header["kid"] != self.kid.as_str() {
            return None;
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        match &self.pair {
            Pair::Rsa { pair, .. } => {
                signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, pair.public())
                    .verify(signed.as_bytes(), &signature)
            }
            Pair::Ec(pair) => signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, pair.public_key())
                .verify(signed.as_bytes(), &signature),
        }
        .ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()
    }
}

#[cfg(all(test, feature = "dev"))]
mod tests {
    use super::*;

    #[test]
    fn the_dev_keys_fingerprint_is_its_modulus_hash() {
        let dev = SigningKey::dev().expect("dev key");
        assert_eq!(dev.public_sha256(), DEV_KEY_MODULUS_SHA256);
        let other = SigningKey::from_pem("other", include_str!("../../tests/fixtures/oidc/previous.pem")).expect("key");
        assert_ne!(other.public_sha256(), DEV_KEY_MODULUS_SHA256);
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

    const EC_CURRENT: &str = include_str!("../../tests/fixtures/oidc/ec-current.pem");

    #[test]
    fn the_dev_ec_keys_fingerprint_is_its_point_hash() {
        let dev = SigningKey::dev_for(Alg::Es256).expect("dev EC key");
        assert_eq!((dev.alg(), dev.kid()), (Alg::Es256, DEV_ES256_KEY_ID));
        // The constant is openssl's hash of the point; the JWK's x and y must make the same point.
        let jwk = dev.jwk();
        let coordinate = |name: &str| URL_SAFE_NO_PAD.decode(jwk[name].as_str().expect(name)).expect("base64url");
        let point = [vec![4], coordinate("x"), coordinate("y")].concat();
        assert_eq!(hex::encode(ring::digest::digest(&ring::digest::SHA256, &point)), DEV_EC_KEY_POINT_SHA256);
        assert!(dev.is_dev_key());
        assert!(!SigningKey::from_ec_pem("other", EC_CURRENT).expect("key").is_dev_key());
    }

    #[test]
    fn an_ec_jwk_has_rfc_7518s_shape() {
        let jwk = SigningKey::from_ec_pem("ec-1", EC_CURRENT).expect("key").jwk();
        let mut names: Vec<&str> = jwk.as_object().expect("object").keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["alg", "crv", "kid", "kty", "use", "x", "y"], "public parts only: {jwk}");
        assert_eq!(
            (&jwk["kty"], &jwk["crv"], &jwk["alg"], &jwk["use"]),
            (&"EC".into(), &"P-256".into(), &"ES256".into(), &"sig".into())
        );
        for name in ["x", "y"] {
            assert_eq!(URL_SAFE_NO_PAD.decode(jwk[name].as_str().expect(name)).expect("b64").len(), 32, "{name}");
        }
    }

    /// An ES256 token checked as a relying party does: ring's verifier over the point the JWK's
    /// `x` and `y` make, never the key pair that signed it.
    #[test]
    fn an_es256_token_verifies_from_its_jwk_and_under_its_key_only() {
        let key = SigningKey::from_ec_pem("ec-1", EC_CURRENT).expect("key");
        let jws = key.sign(&serde_json::json!({ "sub": "x" })).expect("signs");
        let (signed, signature) = jws.rsplit_once('.').expect("three parts");
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(signed.split('.').next().expect("header")).expect("b64"))
                .expect("json");
        assert_eq!((&header["alg"], &header["kid"]), (&"ES256".into(), &"ec-1".into()));
        let signature = URL_SAFE_NO_PAD.decode(signature).expect("b64");
        assert_eq!(signature.len(), 64, "RFC 7518 §3.4: r || s, 32 bytes each, not DER");
        let jwk = key.jwk();
        let coordinate = |name: &str| URL_SAFE_NO_PAD.decode(jwk[name].as_str().expect(name)).expect("base64url");
        let point = [vec![4], coordinate("x"), coordinate("y")].concat();
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &point)
            .verify(signed.as_bytes(), &signature)
            .expect("ring verifies it from the JWK");

        assert_eq!(key.verify(&jws).expect("verifies")["sub"], "x");
        let previous = include_str!("../../tests/fixtures/oidc/ec-previous.pem");
        assert!(SigningKey::from_ec_pem("ec-1", previous).expect("key").verify(&jws).is_none(), "another EC key");
        let rsa = SigningKey::from_pem("ec-1", include_str!("../../tests/fixtures/oidc/previous.pem")).expect("key");
        assert!(rsa.verify(&jws).is_none(), "an RSA key of the same kid: the alg differs");
        assert!(key.verify(&jws.replacen('.', ".e30", 1)).is_none(), "tampered claims");
        let as_rs256 = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT","kid":"ec-1"}"#);
        let relabelled = [as_rs256.as_str(), jws.split_once('.').expect("parts").1].join(".");
        assert!(key.verify(&relabelled).is_none(), "the header's alg must be the key's");
    }

    #[test]
    fn each_loader_refuses_the_other_kind_of_key_without_its_content() {
        let rsa = include_str!("../../tests/fixtures/oidc/current.pem");
        let from_ec = SigningKey::from_ec_pem("k", rsa).expect_err("an RSA key is no EC key");
        assert!(from_ec.contains("EC P-256") && !from_ec.contains("PRIVATE"), "{from_ec}");
        let from_rsa = SigningKey::from_pem("k", EC_CURRENT).expect_err("an EC key is no RSA key");
        assert!(from_rsa.contains("RSA") && !from_rsa.contains("PRIVATE"), "{from_rsa}");
        // A real SEC1 key (`openssl ec` writes them): ring reads PKCS#8 only, and the error says so.
        let sec1 = SigningKey::from_ec_pem("k", include_str!("../../tests/fixtures/oidc/ec-sec1.pem"));
        assert!(sec1.expect_err("SEC1").contains("PKCS#8"));
        assert_eq!(Alg::parse("ES256"), Some(Alg::Es256));
        assert_eq!(Alg::parse("es256"), None, "registered names are case-sensitive");
        assert!(format!("{:?}", SigningKey::dev_for(Alg::Es256).expect("key")).contains("wxauth-dev-es256"));
    }
}
