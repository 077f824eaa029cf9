//! The proxy's checks of a whole config, beyond what `config` can see: rules compiled,
//! certificate and key files loaded, security policies known, CA files read. Run wherever a
//! config is accepted (start, `check`, reload, the API's changes), so a config the proxy
//! cannot serve is refused whole before anything is applied.

use super::{
    rules::RuleTable,
    target_client,
    tls::{self, TlsError},
};
use crate::config::{Config, GroupProtocol, ListenerProtocol};

/// What is wrong, as (dotted field, message), like `Config::problems`.
pub fn problems(config: &Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (li, l) in config.listeners.iter().enumerate() {
        if !l.is_l7() {
            continue;
        }
        let at = format!("listener[{li}]");
        if matches!(l.protocol, ListenerProtocol::Http | ListenerProtocol::Https)
            && let Err(e) = RuleTable::compile(l)
        {
            out.push((at.clone(), e.to_string()));
        }
        if matches!(l.protocol, ListenerProtocol::Https | ListenerProtocol::Tls) {
            match tls::listener_server_config(l) {
                Ok(_) => {}
                // `config` reports a listener without certificates.
                Err(TlsError::NoCertificates) => {}
                Err(e @ (TlsError::Policy(_) | TlsError::InconsistentPolicy { .. })) => {
                    out.push((format!("{at}.ssl_policy"), e.to_string()));
                }
                Err(e) => out.push((format!("{at}.certificates"), e.to_string())),
            }
        }
    }
    for (gi, g) in config.target_groups.iter().enumerate() {
        if g.protocol != GroupProtocol::Https {
            continue;
        }
        if let Some(ca) = &g.ca_file
            && let Err(e) = target_client::root_store(ca)
        {
            out.push((format!("target_group[{gi}].ca_file"), e));
        }
    }
    out
}

/// `problems` as one message per line, or `Ok` if there are none.
pub fn check(config: &Config) -> Result<(), String> {
    let problems = problems(config);
    if problems.is_empty() {
        return Ok(());
    }
    Err(crate::config::problem_text(problems, "\n"))
}
