//! Builds the eBPF object (network-probe-ebpf) with the nightly toolchain and bpf-linker, so
//! the daemon binary embeds it. `cargo xtask` puts bpf-linker on PATH.
//!
//! The object targets BPF CPU v3 (`-C target-cpu=v3`, Linux 5.1 and later): 32-bit
//! subregisters and 32-bit jumps, which take the per-packet path from 401 to 378 executed
//! instructions on an established IPv4 ACK. The build is a plain `cargo build` of that crate
//! (aya-build, which does the same, fixes its compiler flags and has no way to add this one).
//!
//! With `AYA_BUILD_SKIP=1` (host-only checks such as clippy) an empty placeholder is written;
//! a daemon built that way refuses to start.

use std::{
    env, fs,
    io::ErrorKind,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};
// A build-dependency only so cargo reruns this script when the eBPF crate changes.
use network_probe_ebpf as _;

/// The eBPF crate, and its binary (the object's name in OUT_DIR).
const EBPF_PACKAGE: &str = "network-probe-ebpf";
const EBPF_BINARY: &str = "network-probe";
const EBPF_TARGET: &str = "bpfel-unknown-none";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-env-changed=NETWORK_PROBE_GIT_REVISION");
    let revision = env::var("NETWORK_PROBE_GIT_REVISION").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=NETWORK_PROBE_GIT_REVISION={revision}");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    if env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        fs::write(out_dir.join(EBPF_BINARY), []).context("writing placeholder eBPF object")?;
        return Ok(());
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("no workspace root"))?;
    // The build-dependency on the eBPF crate's library reruns this script when it or
    // network-probe-common change; its binary and sources are watched here.
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join(EBPF_PACKAGE).display()
    );
    let object = build_ebpf(workspace, &out_dir)?;
    fs::copy(&object, out_dir.join(EBPF_BINARY))
        .with_context(|| format!("copying {} into {}", object.display(), out_dir.display()))?;
    Ok(())
}

/// Runs `cargo build` of the eBPF crate with the nightly toolchain into its own target
/// directory under `out_dir`; returns the object's path.
fn build_ebpf(workspace: &Path, out_dir: &Path) -> anyhow::Result<PathBuf> {
    let target_arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    let target_dir = out_dir.join("ebpf-target");
    // Compiler flags, separated as CARGO_ENCODED_RUSTFLAGS wants them. aya-ebpf reads
    // `bpf_target_arch` for the host's register layout.
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{target_arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
        // The BPF global function of network-probe-ebpf/src/events.rs: exported, it keeps its
        // global linkage, so the verifier checks it once rather than at every call.
        "-Clink-arg=--export=network_probe_kernel_event".into(),
        "-Ctarget-cpu=v3".into(),
    ]
    .join("\x1f");

    let mut command = Command::new("rustup");
    command.args(["run", "nightly", "cargo"]);
    command
        .current_dir(workspace)
        .args(["build", "--package", EBPF_PACKAGE, "--bin", EBPF_BINARY])
        .args(["--release", "--target", EBPF_TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        // The outer build's compiler and wrappers are the host toolchain's, not nightly's.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    let output = match command.output() {
        Ok(output) => output,
        Err(error) if error.kind() == ErrorKind::NotFound => bail!(
            "rustup not found: the eBPF object needs the nightly toolchain through rustup \
             (`cargo xtask bootstrap` sets it up)"
        ),
        Err(error) => return Err(error).context("running rustup run nightly cargo build"),
    };
    if !output.status.success() {
        bail!(
            "building the eBPF object failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let object = target_dir
        .join(EBPF_TARGET)
        .join("release")
        .join(EBPF_BINARY);
    if !object.is_file() {
        bail!(
            "the eBPF build succeeded but left no object at {}",
            object.display()
        );
    }
    Ok(object)
}
