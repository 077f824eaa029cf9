//! EC2 Auto Scaling's model on this machine: launch templates, auto scaling groups, their
//! instances and the policies that size them, with Amazon EC2 Auto Scaling's nouns, defaults
//! and rules: a group's capacity and how policies and alarms change it, scheduled actions,
//! which instances go on scale-in, the lifecycle hooks an instance waits on, and the activity
//! history in AWS's words.
//!
//! The rules here are pure: nothing reads the clock (every call is given `now`), so each AWS
//! rule is a unit test. Providers run the instances (`provider`: `local` on this machine,
//! `exec` through a hook of the user's).

pub mod activity;
pub mod addressing;
pub mod alarm;
pub mod capacity;
pub mod controller;
mod from_config;
pub mod group;
pub mod lifecycle;
pub mod maintenance;
pub mod policy;
pub mod provider;
pub mod refresh;
pub mod schedule;
pub mod termination;

pub use from_config::{alarm_spec, problems, scheduled_action};
