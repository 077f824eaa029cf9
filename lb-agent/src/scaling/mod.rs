//! EC2 Auto Scaling's model on this machine: launch templates, auto scaling groups, their
//! instances and the policies that size them, in AWS's words and with AWS's defaults.

pub mod alarm;
pub mod schedule;
