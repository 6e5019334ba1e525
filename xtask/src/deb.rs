//! `cargo xtask deb`: builds the Debian package of the daemon with cargo-deb. The package layout
//! (binary, systemd unit, `/etc/default/network-probe`, docs, maintainer scripts creating the
//! `network-probe` system user) is declared in `[package.metadata.deb]` of
//! `network-probe/Cargo.toml`; the scripts live in `packaging/debian/`. cargo-deb itself is
//! installed from crates.io on first use into `~/.cache/network-probe/cargo-deb/`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

const CARGO_DEB_VERSION: &str = "3.8.0";

/// Path of the `cargo-deb` binary, installed when missing. tests/integration/deb.rs expects it at
/// `<cache>/cargo-deb/bin/cargo-deb`.
pub(crate) fn ensure_cargo_deb(cache: &Path) -> Result<PathBuf> {
    let prefix = cache.join("cargo-deb");
    let binary = prefix.join("bin/cargo-deb");
    if binary.is_file() {
        return Ok(binary);
    }
    eprintln!("xtask: installing cargo-deb {CARGO_DEB_VERSION} (once, about 2 minutes)");
    let status = Command::new("cargo")
        .args([
            "install",
            "--locked",
            &format!("cargo-deb@{CARGO_DEB_VERSION}"),
            "--root",
        ])
        .arg(&prefix)
        .env_remove("RUSTUP_TOOLCHAIN")
        .status()
        .context("starting cargo install cargo-deb")?;
    if !status.success() {
        bail!("cargo install cargo-deb failed with {status}");
    }
    Ok(binary)
}

/// Builds the release binary with `release_build` (a prepared `cargo build --release` command:
/// the eBPF object needs bpf-linker on PATH), then packages it. Returns the `.deb` path.
pub(crate) fn build(root: &Path, mut release_build: Command, cargo_deb: &Path) -> Result<PathBuf> {
    let status = release_build
        .status()
        .context("starting cargo build --release")?;
    if !status.success() {
        bail!("cargo build --release failed with {status}");
    }
    // cargo-deb prints the path of the package on stdout; its progress goes to stderr.
    let output = Command::new(cargo_deb)
        .current_dir(root)
        .args(["--no-build", "--package", "network-probe"])
        .stderr(Stdio::inherit())
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .with_context(|| format!("starting {}", cargo_deb.display()))?;
    if !output.status.success() {
        bail!("cargo-deb failed with {}", output.status);
    }
    let path = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let deb = root.join(path.lines().last().unwrap_or_default());
    if !deb.is_file() {
        bail!("cargo-deb reported {path:?}, which is not a file");
    }
    Ok(deb)
}
