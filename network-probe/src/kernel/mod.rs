//! Everything that talks to the kernel about the datapath and the host: loading and attaching
//! the eBPF programs ([`datapath`]), the maps they fill ([`flow_maps`], read in batches by
//! [`map_batch`], pinned in bpffs by [`pinning`]), waiting out running programs
//! ([`program_barrier`]), interfaces, routes and link events over rtnetlink ([`rtnetlink`]), the
//! checks before start-up ([`preflight`]) and dropping capabilities after it ([`privileges`]);
//! which cls_bpf filters are ours, and removing those a killed run left ([`stale_filters`]);
//! the kernel's drop reasons ([`drops`], with offsets and names from the kernel's BTF read by
//! [`btf`]); the passive signals' maps, ECN and path MTU ([`signals`]); the TCP
//! connection-attempt maps ([`outcomes`]); the passive RTT maps ([`rtt`]); taking a map out of
//! the loaded object ([`object`]); the rare kernel-side events, counted and logged through
//! aya-log ([`events`]).
//!
//! A leaf layer: nothing here knows of the command line, the configuration file or HTTP.

pub(crate) mod btf;
pub mod datapath;
pub mod drops;
pub mod events;
pub mod flow_maps;
pub(crate) mod map_batch;
pub(crate) mod object;
pub mod outcomes;
pub(crate) mod pinning;
pub mod preflight;
pub mod privileges;
pub(crate) mod program_barrier;
pub mod rtnetlink;
pub(crate) mod rtt;
pub mod signals;
pub(crate) mod stale_filters;
