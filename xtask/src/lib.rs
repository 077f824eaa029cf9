//! The project's tooling as a library, so integration tests build their labs with the same code
//! as `cargo xtask lab up` and the demo.

pub mod agent;
pub mod lab;
