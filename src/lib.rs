//! wxauth: WeChat web authorization (公众号网页授权 and 开放平台 QR login) for a whole company
//! behind one callback domain.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod allowlist;
pub mod bench;
pub mod clock;
pub mod config;
pub mod demo;
pub mod dev;
pub mod error;
pub mod grpc;
pub mod proto;
pub mod relay;
pub mod secrets;
pub mod sim;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tokens;
pub mod wechat;

/// A random id of `len` characters of `[A-Za-z0-9]` (≈5.95 bits each) from the OS-seeded
/// thread RNG: flow ids (22 characters ≥ 128 bits), lock tokens.
pub fn random_id(len: usize) -> String {
    use rand::Rng as _;
    use rand::distr::Alphanumeric;
    rand::rng().sample_iter(Alphanumeric).take(len).map(char::from).collect()
}
