//! Empty library target: lets the daemon build-depend on this crate so cargo rebuilds the
//! daemon (and with it the embedded eBPF object) when the programs change.
#![no_std]
