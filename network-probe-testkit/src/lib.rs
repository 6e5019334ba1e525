//! The fixtures of network-probe's integration tests (`network-probe/tests/integration/`) and
//! benchmarks (`network-probe/benches/`), one module per concern:
//! - [`netns`]: two network namespaces joined by a veth pair, code run inside a namespace,
//!   datagrams sent across;
//! - [`daemon`]: the daemon binary cargo built, run as a child process in a namespace;
//! - [`http`]: a tiny HTTP/1.1 client; [`metrics`]: samples of a scrape, promtool;
//! - [`capture`]: tcpdump captures; [`kernel`]: nstat counters and attached TC programs;
//!   [`bpffs`]: private bpffs instances; [`command`]: running external programs;
//! - [`testrun`]: the datapath programs run on hand-built frames (BPF_PROG_TEST_RUN);
//! - [`jool_vm`]: the qemu guest with a real Jool kernel module;
//! - [`injector`]: hand-built SYN frames sent at a few microseconds each;
//! - [`browser`]: headless chromium, and `target/test-artefacts/` for what it draws;
//! - [`isolation`]: which tests may run at the same time in the one test process;
//! - [`applicability`]: cases a kernel lacks the feature for, failed or counted as not
//!   applicable, never passed silently.
//!
//! The items the suites use most are re-exported at the crate root.

pub mod applicability;
pub mod bpffs;
pub mod browser;
pub mod capture;
pub mod command;
pub mod daemon;
pub mod http;
pub mod injector;
pub mod isolation;
pub mod jool_vm;
pub mod kernel;
pub mod metrics;
pub mod netns;
pub mod nft;
pub mod routed;
pub mod slowdown;
pub mod testrun;

pub use bpffs::Bpffs;
pub use capture::{Capture, CapturedPacket, Frame, IpHeader};
pub use command::sh;
pub use daemon::{Daemon, daemon_path};
pub use http::{get, http};
pub use kernel::{attached_programs, nstat};
pub use metrics::{flow_entries, promtool_check_metrics, sample};
pub use netns::{VethPair, dotted, in_netns, send_datagrams};
pub use routed::Routed;
