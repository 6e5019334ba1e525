//! `cargo xtask fuzz`: runs the libFuzzer targets in `fuzz/` (one per parser of untrusted bytes)
//! with cargo-fuzz on the nightly toolchain. cargo-fuzz itself is installed from crates.io on
//! first use into `~/.cache/network-probe/cargo-fuzz/`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Directory holding the `cargo-fuzz` binary, installed when missing.
pub fn ensure_cargo_fuzz(cache: &Path) -> Result<PathBuf> {
    let prefix = cache.join("cargo-fuzz");
    let bin = prefix.join("bin");
    if bin.join("cargo-fuzz").is_file() {
        return Ok(bin);
    }
    eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} (once)");
    let status = Command::new("cargo")
        .args([
            "install",
            "--locked",
            &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
            "--root",
        ])
        .arg(&prefix)
        .env_remove("RUSTUP_TOOLCHAIN")
        .status()
        .context("starting cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz failed with {status}");
    }
    Ok(bin)
}

/// Names of the fuzz targets (`fuzz/fuzz_targets/*.rs`), sorted.
pub fn targets(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("fuzz/fuzz_targets");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".rs").map(str::to_string)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// Runs `target` under libFuzzer with the given libFuzzer limit (e.g. `-runs=5000` or
/// `-max_total_time=60`). `command` is a `cargo` command prepared by the caller.
pub fn run(
    mut command: Command,
    root: &Path,
    cargo_fuzz_bin: &Path,
    target: &str,
    limit: &str,
) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![cargo_fuzz_bin.to_path_buf()];
    dirs.extend(std::env::split_paths(&path));
    let status = command
        .current_dir(root.join("fuzz"))
        .env("PATH", std::env::join_paths(dirs).context("PATH")?)
        // The fuzz build only needs the daemon's library, not its eBPF object.
        .env("AYA_BUILD_SKIP", "1")
        .args(["+nightly", "fuzz", "run", target, "--", limit])
        .status()
        .context("starting cargo fuzz")?;
    if !status.success() {
        bail!(
            "fuzz target {target} failed with {status} (crash inputs are in fuzz/artifacts/{target}/)"
        );
    }
    Ok(())
}
