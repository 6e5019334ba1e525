//! Idempotent bootstrap of what building and testing need, checked in well under 2 s when
//! everything is present:
//! - the nightly toolchain's `rust-src` (for `-Z build-std=core` on bpfel-unknown-none);
//! - bpf-linker, built from crates.io against the nightly's own libLLVM (no system LLVM), cached
//!   per nightly commit under `~/.cache/network-probe/`;
//! - for tests, the Debian packages whose programs the tests use as peers and references.
//!
//! It never updates rustup itself and never touches the stable toolchain.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// bpf-linker release that works with the installed nightly (see shared research notes).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the tests rely on, with the program each provides.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip: network namespaces, veth pairs, addresses"),
    (
        "util-linux",
        "setpriv: running the daemon without capabilities",
    ),
    ("procps", "sysctl inside test namespaces"),
    (
        "tcpdump",
        "captures: the reference for flags, DF, window scale, zero windows",
    ),
    (
        "nftables",
        "nft: dropping a fraction of segments to cause retransmissions",
    ),
    (
        "ethtool",
        "turning veth offloads off for packet-exact comparisons",
    ),
];

/// Where the bootstrapped tools live.
pub struct Toolchain {
    /// Directory holding the `bpf-linker` binary (prepended to PATH for builds).
    pub bpf_linker_dir: PathBuf,
}

/// Ensures rust-src and bpf-linker for the installed nightly.
pub fn toolchain() -> Result<Toolchain> {
    let sysroot = PathBuf::from(
        capture("rustc", &["+nightly", "--print", "sysroot"]).context(
            "the nightly toolchain is needed for the eBPF build; install it with \
         `rustup toolchain install nightly --profile minimal --no-self-update`",
        )?,
    );
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        eprintln!("xtask: adding rust-src to the nightly toolchain");
        run(
            "rustup",
            &["component", "add", "rust-src", "--toolchain", "nightly"],
        )?;
    }

    let version = capture("rustc", &["+nightly", "-vV"])?;
    let commit = field(&version, "commit-hash").unwrap_or("unknown");
    let llvm_major = field(&version, "LLVM version")
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV reports no LLVM version")?
        .to_string();
    let prefix = cache_dir().join(format!(
        "bpf-linker-{BPF_LINKER_VERSION}-{}",
        &commit[..commit.len().min(12)]
    ));
    let bin = prefix.join("bin");
    if !linker_works(&bin.join("bpf-linker")) {
        build_bpf_linker(&sysroot, &prefix, &llvm_major)?;
        if !linker_works(&bin.join("bpf-linker")) {
            bail!(
                "bpf-linker was built into {} but does not run; see the output above",
                prefix.display()
            );
        }
    }
    Ok(Toolchain {
        bpf_linker_dir: bin,
    })
}

/// Ensures the Debian packages of [`TEST_PACKAGES`] are installed.
pub fn test_peers() -> Result<()> {
    let names: Vec<&str> = TEST_PACKAGES.iter().map(|(name, _)| *name).collect();
    let missing = missing_packages(&names)?;
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing Debian packages for the tests: {}",
        missing.join(" ")
    );
    run("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(missing.iter().map(String::as_str));
    let status = Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("starting apt-get")?;
    if !status.success() {
        bail!("apt-get install {} failed with {status}", missing.join(" "));
    }
    Ok(())
}

/// Packages among `names` that dpkg does not report as installed.
fn missing_packages(names: &[&str]) -> Result<Vec<String>> {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${db:Status-Status}\\n"])
        .args(names)
        .output()
        .context("starting dpkg-query (is this a Debian system?)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(names
        .iter()
        .filter(|name| {
            !text
                .lines()
                .any(|line| line.split_once(' ') == Some((**name, "installed")))
        })
        .map(|name| name.to_string())
        .collect())
}

/// Builds bpf-linker against the nightly's libLLVM, as measured in the research notes: link
/// with `-lLLVM` through a symlink farm and record the nightly's lib dir as rpath.
fn build_bpf_linker(sysroot: &Path, prefix: &Path, llvm_major: &str) -> Result<()> {
    let lib_dir = sysroot.join("lib");
    let soname = fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib_dir.display()))?;
    let llvm_prefix = prefix.join("rustllvm");
    let llvm_lib = llvm_prefix.join("lib");
    fs::create_dir_all(&llvm_lib).with_context(|| format!("creating {}", llvm_lib.display()))?;
    for link in ["libLLVM.so", soname.as_str()] {
        let path = llvm_lib.join(link);
        let _ = fs::remove_file(&path);
        symlink(lib_dir.join(&soname), &path)
            .with_context(|| format!("linking {}", path.display()))?;
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {soname} (about a minute, once \
         per nightly)"
    );
    let status = Command::new("cargo")
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm_major}"),
            "--root",
        ])
        .arg(prefix)
        .env("LLVM_PREFIX", &llvm_prefix)
        .env(
            "RUSTFLAGS",
            format!("-C link-arg=-Wl,-rpath,{}", lib_dir.display()),
        )
        .env_remove("RUSTUP_TOOLCHAIN")
        .status()
        .context("starting cargo install")?;
    if !status.success() {
        bail!("cargo install bpf-linker failed with {status}");
    }
    Ok(())
}

fn linker_works(path: &Path) -> bool {
    Command::new(path)
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}

fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("network-probe")
}

/// `key: value` line of `rustc -vV` output.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

fn capture(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .with_context(|| format!("starting {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .env_remove("RUSTUP_TOOLCHAIN")
        .status()
        .with_context(|| format!("starting {program}"))?;
    if !status.success() {
        bail!("{program} {} failed with {status}", args.join(" "));
    }
    Ok(())
}
