//! ntd: a re-implementation of the NixOS integration test driver.
//!
//! The binary (`src/main.rs`) only parses the command line; everything else lives in this
//! library so that tests and benches can drive single parts (the switch, the framing) directly.

// Tests may unwrap and panic: a failing assertion is their report.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod checkpoint;
pub mod child;
pub mod cli;
pub mod container;
pub mod driver;
#[cfg(test)]
mod fuzz;
pub(crate) mod hostcpu;
pub mod json;
pub mod log;
pub(crate) mod machine;
pub(crate) mod nbio;
pub mod netlink;
pub(crate) mod procinfo;
pub mod reactor;
pub(crate) mod rpc;
pub mod shim;
pub(crate) mod signals;
pub mod trace;
pub mod vde;
