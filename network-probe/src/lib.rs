//! network-probe: one privileged daemon that accounts traffic in eBPF and serves it, with its
//! active probes, to Prometheus.
//!
//! Module map (one concern each):
//! - [`cli`]: command-line flags in Prometheus exporter conventions.
//! - [`config`]: the `--config.file` format (probe modules, settings that also have flags),
//!   checked, merged with the flags, and reloaded on SIGHUP and `POST /-/reload`.
//! - [`error`]: start-up errors, their one-line messages and exit codes.
//! - [`preflight`]: capability and kernel-feature checks run before anything is touched.
//! - [`rtnetlink`]: interface and route lookups over rtnetlink (default-route interfaces).
//! - [`datapath`]: loads the embedded eBPF object, attaches/detaches it, reads its maps.
//! - [`flow_maps`]: the kernel's flow maps (slot table and LRU maps) read and pruned as one.
//! - [`program_barrier`]: waits until every running eBPF program has finished.
//! - [`map_batch`]: reads whole maps in a few batch system calls.
//! - [`flows`]: turns the kernel flow maps into bounded, monotonic flow series (pure).
//! - [`flow_tracker`]: drives the flow table from the datapath (reads, folds, deletes).
//! - [`flow_exposition`]: writes the flow series of a scrape, chunk by chunk.
//! - [`metrics`]: the Prometheus registry and the collectors that read state at scrape time.
//! - [`jool`]: Jool NAT64/SIIT statistics over generic netlink, read at scrape time.
//! - [`probe`]: active probes behind `/probe` (query parsing, deadlines, one module per prober).
//! - [`http`]: the hyper service (`/metrics`, `/`, `/-/healthy`, `/-/ready`, `/probe`), TLS,
//!   basic auth and request limits.
//! - [`web_config`]: the `--web.config.file` format (exporter-toolkit compatible), parsed.
//! - [`daemon`]: start-up order, signal handling and shutdown.
//! - [`privileges`]: drops the capabilities not needed after start-up.
//! - [`check`]: `network-probe check`, the host doctor.
//! - [`oneshot`]: `network-probe probe`, one probe from the command line.

pub mod check;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod error;
pub mod flow_exposition;
pub mod flow_maps;
pub mod flow_tracker;
pub mod flows;
pub mod http;
pub mod jool;
pub mod map_batch;
pub mod metrics;
pub mod oneshot;
pub mod pinning;
pub mod preflight;
pub mod privileges;
pub mod probe;
pub mod program_barrier;
pub mod rtnetlink;
pub mod state;
pub mod web_config;
