//! The L7 proxy (HTTP, HTTPS and TLS listeners): the pure parts first, each unit-tested without
//! sockets; the tokio/hyper serving is built on them.
//!
//! `pattern` (ALB wildcards), `rules` (a listener's rules compiled into a table that routes a
//! request to an action), `redirect` (redirect actions into `Location` values) and `weighted`
//! (choosing among weighted target groups).

pub mod pattern;
pub mod redirect;
pub mod rules;
pub mod weighted;
