//! The kernel crate's host-side face: empty. It exists so `lb-agent` can list `lb-ebpf` as a
//! build-dependency (cargo then rebuilds the agent when the XDP program changes).
#![no_std]
