//! Auto scaling, after AWS EC2 Auto Scaling: launch templates say WHAT an instance is, auto
//! scaling groups say WHEN and WHERE, and providers run the instances (`provider`).

pub mod provider;
