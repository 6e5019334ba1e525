//! The integration tests, one executable with one module per suite (`cargo test -p network-probe
//! --test integration [suite::]`): one link instead of one per suite, and one place for the
//! fixtures (the `network-probe-testkit` crate).
//!
//! Tests of every suite now share one process and may run at the same time; the few that need
//! the machine to themselves say so through `network_probe_testkit::isolation` (see there for
//! what was checked). Tests need root: they create network namespaces and load eBPF programs.
// Cargo gives this target every dependency of the package; it uses the library's API only.
#![allow(unused_crate_dependencies)]

mod browser;
mod check;
mod churn;
mod config;
mod dashboard;
mod datapath;
mod deb;
mod deploy;
mod drops;
mod ecn;
mod errors;
mod fleet;
mod flow_slots;
mod flows;
mod foreign_filters;
mod hostile_dns;
mod hostile_ping;
mod hostile_probe;
mod hostile_web;
mod hwtstamp;
mod iperf3;
mod jool;
mod malformed;
mod oneshot;
mod outcomes;
mod passive_rtt;
mod ping;
mod ping_truth;
mod pmtu;
mod pressure;
mod privileges;
mod probe_routing;
mod prometheus;
mod restart;
mod state_restore;
mod tftp;
mod top_talkers;
mod truth;
mod web;
