//! The load balancer's agent as a library: the binary (`main.rs`) is its CLI, and the
//! integration tests drive the same modules.

pub mod api;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod health;
pub mod maglev;
pub mod metrics;
pub mod neighbor;
pub mod node;
pub mod overrides;
pub mod pinning;
pub mod state;
