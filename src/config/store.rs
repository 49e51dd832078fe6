//! `[store]`: where records live (memory, Redis, a Cluster, Sentinel), the TLS files of a
//! `rediss://` connection, the key prefix and the sealing keys (docs/design.md §7).

use std::path::{Path, PathBuf};

use url::Url;

use super::raw::{RawStore, StoreKind};
use super::{ConfigError, err};
use crate::secrets::RedisClientKey;
use crate::store::RedisTls;
use crate::store::seal::Keyring;

/// Where records live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreBackend {
    /// In process memory: one replica only.
    Memory,
    /// Redis: one URL for a single node, several for a Cluster.
    Redis(Vec<String>),
    /// Redis behind Sentinel: the Sentinels' URLs and the master's name.
    Sentinel {
        /// `redis://host:26379` of each Sentinel.
        urls: Vec<String>,
        /// The monitored master's name (`mymaster`).
        master: String,
    },
}

/// The validated `[store]` section: what [`crate::store::Store`] is built with.
#[derive(Debug)]
pub struct StoreSettings {
    /// Store backend.
    pub backend: StoreBackend,
    /// What `rediss://` connections trust and present (`store.tls_*`); empty without TLS files.
    pub tls: RedisTls,
    /// Prefix of every store key.
    pub key_prefix: String,
    /// Sealing keys; the first seals.
    pub keyring: Keyring,
}

/// Validates `[store]`: the backend and its URLs, the TLS files, the key prefix, the sealing
/// keys (a random one in dev mode when none is set).
pub(super) fn validate(store: RawStore, dev: bool) -> Result<StoreSettings, ConfigError> {
    let backend = backend(&store)?;
    let tls = load_redis_tls(store.tls_ca_file, store.tls_cert_file, store.tls_key_file)?;
    let key_prefix = store.key_prefix;
    if key_prefix.is_empty() || !key_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
        return Err(err("store.key_prefix", "1+ characters of [A-Za-z0-9_.-]"));
    }
    let keyring = load_keyring(store.sealing_keys, store.sealing_keys_file, dev)?;
    Ok(StoreSettings { backend, tls, key_prefix, keyring })
}

/// `store.kind` with its URLs; TLS files only with `rediss://` URLs.
fn backend(store: &RawStore) -> Result<StoreBackend, ConfigError> {
    match store.kind {
        StoreKind::Memory => {
            if let Some(key) = tls_keys_set(store).first() {
                return Err(err(format!("store.{key}"), "is set, but store.kind is \"memory\""));
            }
            Ok(StoreBackend::Memory)
        }
        StoreKind::Redis => {
            let urls: Vec<String> = store.url.iter().cloned().chain(store.urls.iter().cloned()).collect();
            if urls.is_empty() {
                return Err(err("store.url", "required when store.kind = \"redis\" (or store.urls for a cluster)"));
            }
            let over_tls = check_redis_urls(&urls)?;
            if !over_tls && let Some(key) = tls_keys_set(store).first() {
                return Err(err(
                    format!("store.{key}"),
                    "is set, but the store URLs are not rediss://: the connection would not use TLS",
                ));
            }
            match &store.sentinel_master {
                Some(master) if master.is_empty() => Err(err("store.sentinel_master", "is empty")),
                Some(master) => Ok(StoreBackend::Sentinel { urls, master: master.clone() }),
                None => Ok(StoreBackend::Redis(urls)),
            }
        }
    }
}

/// Each store URL is a Redis URL with a host; all are `rediss://` or none is (the answer).
fn check_redis_urls(urls: &[String]) -> Result<bool, ConfigError> {
    let mut over_tls = None;
    for (i, u) in urls.iter().enumerate() {
        let parsed = Url::parse(u).map_err(|e| err(format!("store.urls[{i}]"), e.to_string()))?;
        if !matches!(parsed.scheme(), "redis" | "rediss" | "redis+unix" | "unix") {
            return Err(err(format!("store.urls[{i}]"), "must be a redis:// or rediss:// URL"));
        }
        if matches!(parsed.scheme(), "redis" | "rediss") && parsed.host_str().is_none_or(str::is_empty) {
            return Err(err(format!("store.urls[{i}]"), "must name a host, as redis://host:port"));
        }
        let tls = parsed.scheme() == "rediss";
        if *over_tls.get_or_insert(tls) != tls {
            return Err(err(format!("store.urls[{i}]"), "mixes rediss:// and plain URLs; use one for all"));
        }
    }
    Ok(over_tls == Some(true))
}

/// The `store.tls_*` keys that are set, in the order errors name them.
fn tls_keys_set(store: &RawStore) -> Vec<&'static str> {
    [
        ("tls_ca_file", &store.tls_ca_file),
        ("tls_cert_file", &store.tls_cert_file),
        ("tls_key_file", &store.tls_key_file),
    ]
    .into_iter()
    .filter_map(|(key, value)| value.as_ref().map(|_| key))
    .collect()
}

/// Reads and checks the Redis TLS files: the CA bundle and the client certificate must hold
/// PEM certificates that redis-rs accepts, the key one PEM private key, and the certificate
/// and key come together. Errors name the key and the file, never a file's contents.
fn load_redis_tls(
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
) -> Result<RedisTls, ConfigError> {
    let ca_pem = match ca_file {
        Some(path) => {
            let pem = read_pem_file("store.tls_ca_file", &path)?;
            check_certificates("store.tls_ca_file", &path, &pem)?;
            // redis-rs turns the bundle into trust anchors at each connection; do it once now
            // so a certificate it cannot use stops start-up here, naming the key.
            let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) };
            redis::Client::build_with_tls("rediss://127.0.0.1/", certs).map_err(|e| {
                err("store.tls_ca_file", format!("{}: not usable as CA certificates: {e}", path.display()))
            })?;
            Some(pem)
        }
        None => None,
    };
    let client = match (cert_file, key_file) {
        (Some(cert_path), Some(key_path)) => {
            let cert = read_pem_file("store.tls_cert_file", &cert_path)?;
            check_certificates("store.tls_cert_file", &cert_path, &cert)?;
            let key = read_pem_file("store.tls_key_file", &key_path)?;
            check_private_key("store.tls_key_file", &key_path, &key)?;
            let key = String::from_utf8(key)
                .map_err(|_| err("store.tls_key_file", format!("{}: not PEM text", key_path.display())))?;
            Some((cert, RedisClientKey::new(key)))
        }
        (Some(_), None) => {
            return Err(err("store.tls_key_file", "required with store.tls_cert_file (mutual TLS needs both)"));
        }
        (None, Some(_)) => {
            return Err(err("store.tls_cert_file", "required with store.tls_key_file (mutual TLS needs both)"));
        }
        (None, None) => None,
    };
    Ok(RedisTls::new(ca_pem, client))
}

fn read_pem_file(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| err(key, format!("cannot read {}: {}", path.display(), e.kind())))
}

/// One or more PEM `CERTIFICATE` blocks, all well-formed.
fn check_certificates(key: &str, path: &Path, pem: &[u8]) -> Result<(), ConfigError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;

    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        cert.map_err(|e| err(key, format!("{}: bad PEM: {e}", path.display())))?;
        count += 1;
    }
    if count == 0 {
        return Err(err(key, format!("{}: no PEM certificate (`-----BEGIN CERTIFICATE-----`) in it", path.display())));
    }
    Ok(())
}

/// A PEM private key (PKCS#8, PKCS#1 or SEC1, unencrypted). The parser's error text is not
/// passed on: it could quote the key file.
fn check_private_key(key: &str, path: &Path, pem: &[u8]) -> Result<(), ConfigError> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject as _;

    PrivateKeyDer::from_pem_slice(pem).map(|_| ()).map_err(|_| {
        err(
            key,
            format!(
                "{}: no unencrypted PEM private key (`PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`) in it",
                path.display()
            ),
        )
    })
}

fn load_keyring(inline: Option<String>, file: Option<PathBuf>, dev: bool) -> Result<Keyring, ConfigError> {
    let text = match (inline, file) {
        (Some(s), None) => s,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map_err(|e| err("store.sealing_keys_file", format!("cannot read {}: {}", path.display(), e.kind())))?,
        (Some(_), Some(_)) => {
            return Err(err("store.sealing_keys", "set `sealing_keys` or `sealing_keys_file`, not both"));
        }
        (None, None) if dev => {
            tracing::warn!("no sealing key configured: using a random one; records will not survive a restart");
            Keyring::generate_line(1)
        }
        (None, None) => {
            return Err(err(
                "store.sealing_keys_file",
                "required: lines of `<id>:<base64 32 bytes>` (`wxauth gen-key` makes one)",
            ));
        }
    };
    Keyring::parse(&text).map_err(|e| err("store.sealing_keys", e.to_string()))
}
