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

/// Writes the manual page (network-probe/src/cli/man.rs, through the `man_page` example built
/// in release mode like the daemon) to target/release/network-probe.8, and gzipped (as Debian
/// ships man pages) next to it; cargo-deb compresses only assets outside target/release.
/// Returns the .gz path.
pub(crate) fn man_page(root: &Path, mut cargo: Command) -> Result<PathBuf> {
    let page = root.join("target/release/network-probe.8");
    let status = cargo
        .args([
            "run",
            "--quiet",
            "--release",
            "--package",
            "network-probe",
            "--example",
            "man_page",
            "--",
        ])
        .arg(&page)
        .status()
        .context("starting cargo run --example man_page")?;
    if !status.success() {
        bail!("cargo run --example man_page failed with {status}");
    }
    // -n: no name or time stamp in the header, so the package is reproducible.
    let status = Command::new("gzip")
        .args(["-9nkf"])
        .arg(&page)
        .status()
        .context("starting gzip")?;
    if !status.success() {
        bail!("gzip {} failed with {status}", page.display());
    }
    Ok(page.with_extension("8.gz"))
}

/// Packages the release binary and the manual page already built (see [`man_page`]). Returns
/// the `.deb` path.
pub(crate) fn package(root: &Path, cargo_deb: &Path) -> Result<PathBuf> {
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
