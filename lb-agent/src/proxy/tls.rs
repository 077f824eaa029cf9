//! TLS termination for `https` and `tls` listeners: the certificates loaded from a listener's PEM
//! files, the choice among them by SNI, the rustls server config a policy and those certificates
//! make. A reload builds a new config into the proxy's next plan, which is swapped in whole:
//! each handshake keeps the config it started with, so open connections are never touched.

mod san;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    InconsistentKeys, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use super::tls_policy::{SecurityPolicy, UnknownPolicy};
use crate::config::{Certificate, Listener, ListenerProtocol};

/// Why a listener's TLS set-up failed; every file error names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read (config: path or permissions).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A file is not well-formed PEM (config).
    #[error("{}: not valid PEM: {reason}", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        reason: String,
    },
    /// A certificate file holds no `CERTIFICATE` block (config: a key file given as `cert`?).
    #[error("{}: no PEM CERTIFICATE block", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A key file holds no private key block (config: a certificate file given as `key`?).
    #[error(
        "{}: no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)",
        path.display()
    )]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// A private key rustls cannot sign with (config: an unsupported algorithm or a bad key).
    #[error("{}: unusable private key: {reason}", path.display())]
    UnusableKey {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        reason: rustls::Error,
    },
    /// A certificate that does not parse as X.509 (config).
    #[error("{}: bad certificate: {reason}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key is not the one the certificate certifies (config: files of two pairs mixed).
    #[error(
        "the private key in {} does not match the certificate in {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A TLS listener with no certificate (config).
    #[error("a TLS listener needs at least one certificate")]
    NoCertificates,
    /// The security policy name is unknown (config).
    #[error(transparent)]
    Policy(#[from] UnknownPolicy),
    /// rustls refused a policy's versions and suites together (a bug in the policy table).
    #[error("TLS security policy {policy} is inconsistent: {reason}")]
    InconsistentPolicy {
        /// The policy.
        policy: &'static str,
        /// What rustls said.
        reason: rustls::Error,
    },
}

/// One certificate chain with its key, and the names it serves.
#[derive(Debug, Clone)]
pub struct StoredCertificate {
    /// The certificate file it came from (for logs and errors).
    pub cert_path: PathBuf,
    /// The leaf's SAN DNS names, lowercased; wildcards as `*.example.com`.
    pub names: Vec<String>,
    /// The chain and the signing key, as rustls serves them.
    pub key: Arc<CertifiedKey>,
}

/// A listener's certificates, loaded and checked; never empty, the first is the default.
#[derive(Debug, Clone)]
pub struct CertificateStore {
    default: StoredCertificate,
    others: Vec<StoredCertificate>,
}

impl CertificateStore {
    /// Loads each `{cert, key}` pair: the cert file's PEM chain (leaf first) and the key file's
    /// first private key, which must be the leaf's.
    pub fn load(certificates: &[Certificate]) -> Result<Self, TlsError> {
        // Keys load the same whatever the policy: the provider only parses and signs.
        let provider = rustls::crypto::ring::default_provider();
        let mut loaded = certificates.iter().map(|c| {
            let cert_pem = read(&c.cert)?;
            let key_pem = read(&c.key)?;
            load_pair(&c.cert, &cert_pem, &c.key, &key_pem, &provider)
        });
        let default = loaded.next().ok_or(TlsError::NoCertificates)??;
        let others = loaded.collect::<Result<_, _>>()?;
        Ok(Self { default, others })
    }

    /// The default certificate (the first listed).
    pub fn default_certificate(&self) -> &StoredCertificate {
        &self.default
    }

    /// Every certificate in listed order, the default first.
    pub fn iter(&self) -> impl Iterator<Item = &StoredCertificate> {
        std::iter::once(&self.default).chain(&self.others)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// One chain and key from their PEM text; the paths only name them in errors.
fn load_pair(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<StoredCertificate, TlsError> {
    let bad_pem = |path: &Path, e: rustls::pki_types::pem::Error| TlsError::BadPem {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(cert_path, e))?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
        });
    };
    let names = san::dns_names(leaf).map_err(|e| TlsError::BadCertificate {
        path: cert_path.to_owned(),
        reason: e.to_string(),
    })?;
    let key = match PrivateKeyDer::from_pem_slice(key_pem) {
        Ok(key) => key,
        Err(rustls::pki_types::pem::Error::NoItemsFound) => {
            return Err(TlsError::NoKey {
                path: key_path.to_owned(),
            });
        }
        Err(e) => return Err(bad_pem(key_path, e)),
    };
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|reason| TlsError::UnusableKey {
            path: key_path.to_owned(),
            reason,
        })?;
    let key = CertifiedKey::new(chain, signing_key);
    match key.keys_match() {
        // Unknown: the key type cannot tell its public key; the handshake will show it.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch {
                cert: cert_path.to_owned(),
                key: key_path.to_owned(),
            });
        }
        Err(reason) => {
            return Err(TlsError::BadCertificate {
                path: cert_path.to_owned(),
                reason: reason.to_string(),
            });
        }
    }
    Ok(StoredCertificate {
        cert_path: cert_path.to_owned(),
        names,
        key: Arc::new(key),
    })
}

/// Chooses a listener's certificate by the SNI name: a certificate naming it exactly, else one
/// with the wildcard one label up (`*.example.com` serves `a.example.com`, not `example.com`
/// nor `a.b.example.com`, as RFC 6125 and browsers match), else the default. When two
/// certificates claim a name, the one listed first keeps it.
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the parent domain: `*.example.com` under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    /// Indexes the store's names.
    pub fn new(store: &CertificateStore) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for cert in store.iter() {
            for name in &cert.names {
                let index = match name.strip_prefix("*.") {
                    Some(parent) => (&mut wildcard, parent),
                    // Any other `*` (`a*.example.com`) is a pattern no client name equals.
                    None if name.contains('*') => continue,
                    None => (&mut exact, name.as_str()),
                };
                index
                    .0
                    .entry(index.1.to_owned())
                    .or_insert_with(|| cert.key.clone());
            }
        }
        Self {
            exact,
            wildcard,
            default: store.default_certificate().key.clone(),
        }
    }

    /// The certificate for a client's SNI name (none sent: the default).
    pub fn choose(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = server_name else {
            return &self.default;
        };
        // DNS names compare without case and a trailing root dot.
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return key;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(client_hello.server_name()).clone())
    }
}

/// The application protocols a listener offers in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Alpn {
    /// `h2`, then `http/1.1` (HTTPS listeners).
    #[default]
    H2AndHttp1,
    /// `http/1.1` only (HTTPS listeners whose targets or clients must not get HTTP/2).
    Http1Only,
    /// None offered (TLS listeners, whose targets speak their own protocol).
    None,
}

impl Alpn {
    /// The protocol ids in preference order.
    pub fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::H2AndHttp1 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Alpn::Http1Only => vec![b"http/1.1".to_vec()],
            Alpn::None => Vec::new(),
        }
    }
}

/// The server config of an https or tls listener: its policy (the default when it names
/// none), its certificates, ALPN `h2` and `http/1.1` for https and none for tls. The one way
/// the proxy builds a listener's TLS, for serving (`plan`) and for checking a config
/// (`check`).
pub fn listener_server_config(listener: &Listener) -> Result<Arc<ServerConfig>, TlsError> {
    let alpn = if listener.protocol == ListenerProtocol::Https {
        Alpn::H2AndHttp1
    } else {
        Alpn::None
    };
    // The policy first: an unknown name is reported as such, whatever the certificates.
    SecurityPolicy::named(&listener.l7().ssl_policy)?;
    let store = CertificateStore::load(&listener.certificates)?;
    server_config(&listener.l7().ssl_policy, &store, alpn)
}

/// The rustls server config for a listener: the named policy's versions and suites, in the
/// policy's order rather than the client's (as ALB does), certificates chosen by SNI.
pub fn server_config(
    policy_name: &str,
    store: &CertificateStore,
    alpn: Alpn,
) -> Result<Arc<ServerConfig>, TlsError> {
    let policy = SecurityPolicy::named(policy_name)?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(policy.crypto_provider()))
        .with_protocol_versions(policy.versions())
        .map_err(|reason| TlsError::InconsistentPolicy {
            policy: policy.name(),
            reason,
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver::new(store)));
    config.ignore_client_order = true;
    config.alpn_protocols = alpn.protocols();
    Ok(Arc::new(config))
}
