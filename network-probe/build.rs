//! Builds the eBPF object (network-probe-ebpf) with the nightly toolchain and bpf-linker via
//! aya-build, so the daemon binary embeds it. `cargo xtask` puts bpf-linker on PATH.
//!
//! With `AYA_BUILD_SKIP=1` (host-only checks such as clippy) an empty placeholder is written;
//! a daemon built that way refuses to start.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-env-changed=NETWORK_PROBE_GIT_REVISION");
    let revision = env::var("NETWORK_PROBE_GIT_REVISION").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=NETWORK_PROBE_GIT_REVISION={revision}");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    if env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        fs::write(out_dir.join("network-probe"), []).context("writing placeholder eBPF object")?;
        return Ok(());
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("no workspace root"))?
        .join("network-probe-ebpf");
    let ebpf_dir = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [Package {
            name: "network-probe-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
}
