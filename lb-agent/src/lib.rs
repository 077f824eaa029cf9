//! The load balancer's agent as a library: the binary (`main.rs`, `cli/`) is its CLI and
//! start-up, and the integration tests drive the same modules.
//!
//! Modules import each other without a cycle (`module_graph_has_no_cycle` checks it):
//! `config` <- `health`, `overrides` <- `protocol` <- `state` (with `dataplane`, `maglev`) <-
//! `agent` (writer, monitor; with `metrics`) <- `api`; `client` needs only `protocol`.

pub mod agent;
pub mod api;
pub mod client;
pub mod config;
pub mod dataplane;
pub mod health;
pub mod maglev;
pub mod metrics;
pub mod neighbor;
pub mod node;
pub mod overrides;
pub mod pinning;
pub mod protocol;
pub mod state;
