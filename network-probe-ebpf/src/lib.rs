//! Empty library target: lets the daemon build-depend on this crate so cargo rebuilds the
//! daemon (and with it the embedded eBPF object) when the programs change.
#![no_std]
// The library is empty on purpose, so the crate's dependencies go unused in it (they serve the
// `network-probe` binary target, the eBPF object).
#![allow(unused_crate_dependencies)]
