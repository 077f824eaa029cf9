//! The L7 proxy (issue 10): the pieces the agent's HTTP, HTTPS and TLS listeners are built from.
//! Pure, unit-tested building blocks; the tokio/hyper serving loop that uses them comes later.

pub mod tls;
pub mod tls_policy;
