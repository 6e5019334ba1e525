//! network-probe: one privileged daemon that accounts traffic in eBPF and serves it, with its
//! active probes, to Prometheus.
//!
//! The folders are the stages data passes through, and the layers they form; a module uses its
//! own folder and lower layers only (README.md, "The daemon's modules, in layers"; checked by
//! `cargo xtask layers`):
//!
//! 0. [`error`]: start-up errors and their exit codes;
//! 1. [`support`]: units, listen addresses, locks, randomness, heap trimming;
//! 2. [`kernel`] (load, attach, pin, read maps, link events) and [`jool`] (Jool statistics over
//!    generic netlink);
//! 3. [`flows`] (flow table, state file, exposition) and [`probe`] (the probe framework and one
//!    folder per prober);
//! 4. [`metrics`]: registry and rendering;
//! 5. [`cli`]: the flags, built from the lower layers' own types;
//! 6. [`config`]: the configuration file on top of the flags, and its reloading;
//! 7. [`web`]: listeners, connection limits, TLS and auth, scrape sharing and routes;
//! 8. [`commands`]: the daemon's start-up, `check` and the one-shot `probe`.
//!
//! Modules are private to the crate unless the binary, the tests, the benchmarks or the fuzz
//! targets use them.

// Unit tests see the dev-dependencies (the integration tests' kit) without using them.
#![cfg_attr(test, allow(unused_crate_dependencies))]

pub mod cli;
pub mod commands;
pub mod config;
pub(crate) mod error;
pub(crate) mod flows;
pub mod jool;
pub mod kernel;
pub mod metrics;
pub mod probe;
pub(crate) mod support;
pub mod web;
