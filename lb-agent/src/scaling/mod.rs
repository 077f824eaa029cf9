//! EC2 Auto Scaling's model on this machine: launch templates, auto scaling groups, their
//! instances and the policies that size them, in AWS's words and with AWS's defaults.

pub mod activity;
pub mod addressing;
pub mod alarm;
mod from_config;
pub mod schedule;

pub use from_config::{alarm_spec, problems, scheduled_action};
