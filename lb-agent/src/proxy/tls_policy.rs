//! Named TLS security policies, as AWS ALB's `ELBSecurityPolicy-*`: each name fixes the protocol
//! versions and cipher suites a listener offers. AWS's lists are cut down to what rustls' ring
//! provider implements (no CBC, no static RSA key exchange), which only removes suites.

use rustls::{
    SupportedCipherSuite, SupportedProtocolVersion,
    crypto::{CryptoProvider, ring, ring::cipher_suite as suite},
};

/// The policy a listener gets when it names none: what AWS gives new HTTPS listeners.
pub const DEFAULT_POLICY: &str = TLS13_1_2_2021_06;

// The config names the default too (views show it without depending on the proxy).
const TLS13_1_2_2021_06: &str = crate::config::DEFAULT_SSL_POLICY;
const TLS13_1_3_2021_06: &str = "ELBSecurityPolicy-TLS13-1-3-2021-06";

/// AWS's TLS 1.3 suites, in AWS's order (all three are in ring).
const TLS13_SUITES: [SupportedCipherSuite; 3] = [
    suite::TLS13_AES_128_GCM_SHA256,
    suite::TLS13_AES_256_GCM_SHA384,
    suite::TLS13_CHACHA20_POLY1305_SHA256,
];

/// AWS's TLS 1.2 suites for `ELBSecurityPolicy-TLS13-1-2-2021-06` that ring offers, in AWS's
/// order: its ECDHE AES-GCM suites. Its `*-SHA256`/`*-SHA384` CBC suites have no rustls
/// implementation; ring's ECDHE CHACHA20 suites for 1.2 are not in AWS's list, so stay out.
const TLS12_SUITES: [SupportedCipherSuite; 4] = [
    suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
];

/// Every policy this proxy knows, the default first.
static POLICIES: [SecurityPolicy; 2] = [
    SecurityPolicy {
        name: TLS13_1_2_2021_06,
        versions: &[&rustls::version::TLS13, &rustls::version::TLS12],
        tls13_suites: &TLS13_SUITES,
        tls12_suites: &TLS12_SUITES,
    },
    SecurityPolicy {
        name: TLS13_1_3_2021_06,
        versions: &[&rustls::version::TLS13],
        tls13_suites: &TLS13_SUITES,
        tls12_suites: &[],
    },
];

/// A named set of TLS versions and cipher suites.
#[derive(Debug)]
pub struct SecurityPolicy {
    name: &'static str,
    versions: &'static [&'static SupportedProtocolVersion],
    tls13_suites: &'static [SupportedCipherSuite],
    tls12_suites: &'static [SupportedCipherSuite],
}

/// A policy name the proxy does not know (a config error).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown TLS security policy {name:?}; known: {}", known.join(", "))]
pub struct UnknownPolicy {
    /// The name asked for.
    pub name: String,
    /// The names accepted.
    pub known: Vec<&'static str>,
}

impl SecurityPolicy {
    /// The policy called `name` (exact, case-sensitive, as AWS spells it).
    pub fn named(name: &str) -> Result<&'static SecurityPolicy, UnknownPolicy> {
        POLICIES
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| UnknownPolicy {
                name: name.to_owned(),
                known: Self::known_names(),
            })
    }

    /// The policy listeners get when they name none ([`DEFAULT_POLICY`]).
    pub fn default_policy() -> &'static SecurityPolicy {
        &POLICIES[0]
    }

    /// The names of every known policy, the default first.
    pub fn known_names() -> Vec<&'static str> {
        POLICIES.iter().map(|p| p.name).collect()
    }

    /// Its name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The TLS versions it offers, newest first.
    pub fn versions(&self) -> &'static [&'static SupportedProtocolVersion] {
        self.versions
    }

    /// Its cipher suites in preference order: TLS 1.3's, then TLS 1.2's.
    pub fn cipher_suites(&self) -> Vec<SupportedCipherSuite> {
        self.tls13_suites
            .iter()
            .chain(self.tls12_suites)
            .copied()
            .collect()
    }

    /// ring's provider limited to this policy's suites; key exchange groups stay ring's
    /// (X25519, P-256, P-384), all of which AWS's policies accept.
    pub fn crypto_provider(&self) -> CryptoProvider {
        CryptoProvider {
            cipher_suites: self.cipher_suites(),
            ..ring::default_provider()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_is_tls12_and_tls13() {
        let policy = SecurityPolicy::named(DEFAULT_POLICY).unwrap();
        assert_eq!(policy.name(), SecurityPolicy::default_policy().name());
        assert_eq!(
            policy.versions(),
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        );
    }

    #[test]
    fn tls13_only_policy_offers_no_tls12_version_or_suite() {
        let policy = SecurityPolicy::named("ELBSecurityPolicy-TLS13-1-3-2021-06").unwrap();
        assert_eq!(policy.versions(), &[&rustls::version::TLS13]);
        assert!(
            policy
                .cipher_suites()
                .iter()
                .all(|s| s.version() == &rustls::version::TLS13)
        );
    }

    #[test]
    fn tls12_suites_are_aws_ecdhe_gcm_only() {
        let policy = SecurityPolicy::named("ELBSecurityPolicy-TLS13-1-2-2021-06").unwrap();
        let tls12: Vec<String> = policy
            .cipher_suites()
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS12)
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(
            tls12,
            [
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            ]
        );
    }

    #[test]
    fn provider_offers_only_the_policy_suites() {
        let policy = SecurityPolicy::default_policy();
        let provider = policy.crypto_provider();
        assert_eq!(provider.cipher_suites, policy.cipher_suites());
        assert!(!provider.kx_groups.is_empty());
    }

    #[test]
    fn unknown_policy_is_refused_with_the_known_names() {
        let err = SecurityPolicy::named("ELBSecurityPolicy-2016-08").unwrap_err();
        assert_eq!(err.known, SecurityPolicy::known_names());
        let shown = err.to_string();
        assert!(shown.contains("\"ELBSecurityPolicy-2016-08\""), "{shown}");
        assert!(
            shown.contains("ELBSecurityPolicy-TLS13-1-2-2021-06"),
            "{shown}"
        );
        assert!(
            shown.contains("ELBSecurityPolicy-TLS13-1-3-2021-06"),
            "{shown}"
        );
    }
}
