//! Credential newtypes. Each wraps a secret whose `Debug` prints `[redacted]` and which has no
//! `Display`, so a secret can reach a log, an error or a span only through its one accessor,
//! `secret()`, whose call sites are the places a secret leaves (oauth2-rs `new_secret_type!`).

macro_rules! secret_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            /// Wraps a secret value.
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            /// The secret itself: the one place it leaves the wrapper. Call it only to send the
            /// secret where it belongs (WeChat, the sealed store).
            pub fn secret(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($name), "([redacted])"))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d).map(Self)
            }
        }
    };
}

secret_type!(
    /// A WeChat appsecret: sent to `sns/oauth2/access_token` and nowhere else.
    AppSecret
);
secret_type!(
    /// A one-time authorization code WeChat gives the browser.
    AuthCode
);
secret_type!(
    /// A user's web access token (7200 s).
    AccessToken
);
secret_type!(
    /// A user's refresh token (30 days).
    RefreshToken
);
secret_type!(
    /// An app's own credential: its access token (`cgi-bin/stable_token`) or its
    /// `jsapi_ticket`. Sealed in the store; the token leaves only to a client granted
    /// `app_access_token`, the ticket never.
    AppCredentialValue
);
secret_type!(
    /// A mini program user's session key (`sns/jscode2session`): sealed in the store under the
    /// user, never returned to a caller.
    SessionKey
);
secret_type!(
    /// A caller's client key, as presented in `authorization: Bearer ...`.
    ClientKey
);
secret_type!(
    /// An official account's message-push Token (`apps.<name>.push.token`): what WeChat's
    /// `signature` and `msg_signature` are made with; never sent anywhere.
    PushToken
);
secret_type!(
    /// An official account's message-push EncodingAESKey (`apps.<name>.push.encoding_aes_key`):
    /// 43 characters, the base64 (without its `=`) of the AES-256 key of the safe mode.
    EncodingAesKey
);
secret_type!(
    /// The private key (PEM) of wxauth's own client certificate for Redis mutual TLS
    /// (`store.tls_key_file`): handed to the TLS library and nowhere else.
    RedisClientKey
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_secret() {
        let secret = AppSecret::new("s3cr3t-value");
        let printed = format!("{secret:?} {:?}", AccessToken::new("tok-value"));
        assert!(!printed.contains("s3cr3t-value"));
        assert!(!printed.contains("tok-value"));
        assert_eq!(printed, "AppSecret([redacted]) AccessToken([redacted])");
    }
}
