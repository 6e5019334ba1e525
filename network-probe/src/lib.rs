//! network-probe: one privileged daemon that accounts traffic in eBPF and serves it, with its
//! active probes, to Prometheus.
//!
//! The folders are the stages data passes through, and the layers they form; a module may use
//! the ones below it, never one above (README.md, "Layout", says how to check):
//!
//! 1. leaves: [`support`] (units, listen addresses), [`error`], [`kernel`] (load, attach, pin,
//!    read maps, link events), [`flows`] (flow table, state file, exposition), [`probe`] (the
//!    probe framework and one folder per prober), [`jool`] (Jool statistics over generic
//!    netlink), [`metrics`] (registry and rendering);
//! 2. [`cli`]: the flags, built from the leaves' own types;
//! 3. [`config`]: the configuration file on top of the flags, and its reloading;
//! 4. [`web`]: listeners, TLS and auth, scrape sharing and routes;
//! 5. [`commands`]: the daemon's start-up, `check` and the one-shot `probe`.

pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod flows;
pub mod jool;
pub mod kernel;
pub mod metrics;
pub mod probe;
pub mod support;
pub mod web;
