//! Launch templates and auto scaling groups, with Amazon EC2 Auto Scaling's nouns, defaults and
//! rules: a group's capacity and how policies change it, which instances go on scale-in, and
//! the lifecycle hooks an instance waits on.
//!
//! The rules here are pure: nothing reads the clock (every call is given `now`, a `Duration`
//! since an epoch the caller picks and keeps), so each AWS rule is a unit test.

pub mod capacity;
pub mod lifecycle;
pub mod policy;
pub mod termination;
