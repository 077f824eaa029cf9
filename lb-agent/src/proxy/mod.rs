//! The L7 proxy (HTTP, HTTPS and TLS listeners): the pure parts first, each unit-tested without
//! sockets; the tokio/hyper serving loop is built on them (not yet: nothing here serves).
//!
//! `pattern` (ALB wildcards), `rules` (a listener's rules compiled into a table that routes a
//! request to an action), `redirect` (redirect actions into `Location` values), `weighted`
//! (choosing among weighted target groups), `tls` (certificates from PEM files, the SNI
//! resolver, the server config and its swappable slot) and `tls_policy` (named security
//! policies: versions and cipher suites).

pub mod framing;
pub mod pattern;
pub mod redirect;
pub mod rules;
pub mod tls;
pub mod tls_policy;
pub mod weighted;
