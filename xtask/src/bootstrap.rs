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
    (
        "iperf3",
        "iperf3 -s / -c: the server the iperf3 prober is tested and benchmarked against",
    ),
    (
        "openssl",
        "openssl: RSA keys and password hashes for the iperf3 authentication tests",
    ),
    ("iproute2", "ip: network namespaces, veth pairs, addresses"),
    (
        "apache2-utils",
        "htpasswd: bcrypt hashes for the basic auth tests of --web.config.file",
    ),
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
    (
        "iputils-ping",
        "ping: the RTT reference of the ping prober's tests and benchmark",
    ),
    (
        "tftpd-hpa",
        "in.tftpd: the TFTP server the tftp prober is tested against",
    ),
    (
        "tftp-hpa",
        "tftp: the client the tftp prober is benchmarked against",
    ),
    (
        "curl",
        "curl tftp://: the second client of the tftp benchmark",
    ),
    (
        "prometheus",
        "prometheus and promtool: the real scraper our exposition is checked against",
    ),
    (
        "bpftool",
        "bpftool map show: the key size of pinned maps in tests/integration/restart.rs",
    ),
    (
        "man-db",
        "man -l: renders the packaged manual page in tests/integration/deb.rs",
    ),
    (
        "chromium",
        "chromium --headless: loads the landing page in tests/integration/browser.rs",
    ),
    (
        "python3-yaml",
        "python3 -c 'import yaml': parses deploy/kubernetes/*.yaml in tests/integration/deploy.rs",
    ),
];

/// Where the bootstrapped tools live.
pub(crate) struct Toolchain {
    /// Directory holding the `bpf-linker` binary (prepended to PATH for builds).
    pub bpf_linker_dir: PathBuf,
}

/// Ensures rust-src and bpf-linker for the installed nightly.
pub(crate) fn toolchain() -> Result<Toolchain> {
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
pub(crate) fn test_peers() -> Result<()> {
    jool_guest()?;
    // tests/integration/deb.rs packages the daemon with it.
    crate::deb::ensure_cargo_deb(&cache_dir())?;
    atftpd()?;
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

/// Extracts atftpd (the TFTP server with RFC 7440 windowsize) into
/// `~/.cache/network-probe/atftpd/` when missing. It is not installed: its package conflicts
/// with tftpd-hpa, and the tests run it from the extracted tree.
fn atftpd() -> Result<()> {
    let root = cache_dir().join("atftpd");
    if root.join("usr/sbin/atftpd").is_file() {
        return Ok(());
    }
    eprintln!("xtask: fetching atftpd into {}", root.display());
    let download = cache_dir().join("atftpd-download");
    fs::create_dir_all(&download).with_context(|| format!("creating {}", download.display()))?;
    let fetch = || {
        Command::new("apt-get")
            .args(["download", "-qq", "atftpd"])
            .current_dir(&download)
            .status()
            .is_ok_and(|status| status.success())
    };
    if !fetch() {
        run("apt-get", &["update", "-qq"])?;
        if !fetch() {
            bail!("apt-get download atftpd failed");
        }
    }
    let deb = fs::read_dir(&download)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .context("apt-get download atftpd left no .deb")?;
    let staging = cache_dir().join("atftpd-staging");
    let _ = fs::remove_dir_all(&staging);
    run(
        "dpkg-deb",
        &["-x", &deb.to_string_lossy(), &staging.to_string_lossy()],
    )?;
    let _ = fs::remove_dir_all(&root);
    fs::rename(&staging, &root).with_context(|| format!("moving atftpd to {}", root.display()))?;
    let _ = fs::remove_dir_all(&download);
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

pub(crate) fn cache_dir() -> PathBuf {
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

/// Packages for the Jool test guest (tests/integration/jool.rs): qemu, a static busybox, the Jool CLIs and
/// what dkms needs to build the module for the guest kernel (`linux-headers-<abi>` is added).
const JOOL_GUEST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "dkms",
    "jool-tools",
];

/// Modules of the image the Jool modules need (jool: x_tables, nf_defrag_ipv4/6; jool_siit:
/// x_tables). Jool itself is not in the image, so these are named rather than resolved.
const JOOL_IMAGE_MODULES: &[&str] = &["x_tables", "nf_defrag_ipv4", "nf_defrag_ipv6"];

/// Kernel modules loaded in the guest before the tests (copied here from the
/// kernel image with their dependencies): veth pairs, the clsact qdisc (sch_ingress) and
/// cls_bpf filters the daemon falls back to without TCX, and nf_tables with numgen for tests
/// that drop a fraction of packets with nft. crc32c_generic is libcrc32c's soft dependency
/// (nf_tables needs libcrc32c), which modules.dep does not list. nft_reject_inet (with
/// nft_reject, nf_reject_ipv4/6) for the outcomes suite's `reject with icmpx` rule: the guest's
/// kernel cannot load it on demand (busybox installs no /sbin/modprobe).
/// sch_netem: the delay of the passive RTT suite's netem case.
pub(crate) const GUEST_MODULES: &[&str] = &[
    "veth",
    "sch_ingress",
    "cls_bpf",
    "crc32c_generic",
    "nf_tables",
    "nft_numgen",
    "nft_reject_inet",
    "sch_netem",
];

/// Names the module set of a prepared guest; a cache whose stamp differs (prepared by an older
/// bootstrap, or before a module was added to [`GUEST_MODULES`]) gets its
/// module tree rebuilt from the image, without running dkms again.
const GUEST_MODULES_STAMP: &str = "modules.stamp";

pub(crate) fn guest_modules_stamp() -> String {
    let mut names: Vec<&str> = JOOL_IMAGE_MODULES.to_vec();
    names.extend(GUEST_MODULES);
    names.join("\n") + "\n"
}

/// Prepares, once, the Debian stable kernel guest that tests/integration/jool.rs and the kernel VM runner
/// (the guest runner, `kernel_vm.rs`) boot under qemu, into `~/.cache/network-probe/jool/`: `vmlinuz` of
/// Debian's current stable kernel ABI (resolved from `linux-image-amd64`, downloaded, not
/// installed); `modules/lib/modules/<abi>/` with Jool 4.1.9 built by jool-dkms, the image's
/// modules Jool and the guest tests need (with their dependencies) and depmod's index; `abi`
/// naming the ABI and `modules.stamp` naming the module set. Fast when all of these are current.
pub(crate) fn jool_guest() -> Result<()> {
    let dir = cache_dir().join("jool");
    let stamp_current = fs::read_to_string(dir.join(GUEST_MODULES_STAMP))
        .is_ok_and(|stamp| stamp == guest_modules_stamp());
    if dir.join("abi").is_file() && dir.join("vmlinuz").is_file() && stamp_current {
        let missing = missing_packages(JOOL_GUEST_PACKAGES)?;
        if missing.is_empty() {
            return Ok(());
        }
    }
    let current_abi = || {
        capture("apt-cache", &["depends", "linux-image-amd64"])
            .ok()?
            .lines()
            .find_map(|line| line.trim().strip_prefix("Depends: linux-image-"))
            .map(str::to_string)
    };
    // The package lists decide the ABI, so they are refreshed first: a machine's lists may be
    // empty, or old enough to name a kernel whose headers the archive no longer has.
    run("apt-get", &["update", "-qq"])?;
    let abi =
        current_abi().context("apt-cache depends linux-image-amd64 names no linux-image-<abi>")?;
    eprintln!(
        "xtask: preparing the test guest for kernel {abi} (about 2 minutes the first time, a few \
         seconds to add modules)"
    );
    let headers = format!("linux-headers-{abi}");
    let mut packages: Vec<&str> = JOOL_GUEST_PACKAGES.to_vec();
    packages.push(&headers);
    packages.push("jool-dkms");
    let missing = missing_packages(&packages)?;
    if !missing.is_empty() {
        // The headers first: jool-dkms builds for every kernel with headers when installed.
        for group in [
            missing
                .iter()
                .filter(|p| *p != "jool-dkms")
                .collect::<Vec<_>>(),
            missing.iter().filter(|p| *p == "jool-dkms").collect(),
        ] {
            if group.is_empty() {
                continue;
            }
            let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
            args.extend(group.iter().map(|p| p.as_str()));
            let status = Command::new("apt-get")
                .args(&args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .context("starting apt-get")?;
            if !status.success() {
                bail!("apt-get {} failed with {status}", args.join(" "));
            }
        }
    }
    let dkms_dir = PathBuf::from(format!("/lib/modules/{abi}/updates/dkms"));
    if !dkms_dir.join("jool.ko").is_file() {
        run("dkms", &["autoinstall", "-k", &abi])?;
    }
    for module in ["jool_common.ko", "jool.ko", "jool_siit.ko"] {
        if !dkms_dir.join(module).is_file() {
            bail!(
                "jool-dkms did not build {module} for {abi} (no {}); see `dkms status` and \
                 /var/lib/dkms/jool-dkms/*/build/make.log",
                dkms_dir.join(module).display()
            );
        }
    }

    let work = dir.join("work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let status = Command::new("apt-get")
        .args(["download", &format!("linux-image-{abi}")])
        .current_dir(&work)
        .status()
        .context("starting apt-get download")?;
    if !status.success() {
        bail!("apt-get download linux-image-{abi} failed with {status}");
    }
    let deb = fs::read_dir(&work)?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .context("apt-get download left no .deb")?;
    let image = work.join("image");
    run(
        "dpkg-deb",
        &["-x", &deb.to_string_lossy(), &image.to_string_lossy()],
    )?;
    let modules = dir.join("modules");
    let _ = fs::remove_dir_all(&modules);
    let kernel_modules = format!("lib/modules/{abi}");
    let mut copies: Vec<(PathBuf, PathBuf)> = ["jool_common.ko", "jool.ko", "jool_siit.ko"]
        .iter()
        .map(|m| {
            (
                dkms_dir.join(m),
                modules.join(&kernel_modules).join("updates/dkms").join(m),
            )
        })
        .collect();
    // The image's .deb has no modules.dep: index the extracted tree, then copy the modules the
    // guest needs with everything they depend on.
    run("depmod", &["-b", &image.to_string_lossy(), &abi])?;
    let image_dep_path = image.join(&kernel_modules).join("modules.dep");
    let image_dep = fs::read_to_string(&image_dep_path)
        .with_context(|| format!("reading {}", image_dep_path.display()))?;
    let mut wanted: Vec<&str> = JOOL_IMAGE_MODULES.to_vec();
    wanted.extend(GUEST_MODULES);
    for relative in module_closure(&image_dep, &wanted)? {
        copies.push((
            image.join(&kernel_modules).join(&relative),
            modules.join(&kernel_modules).join(&relative),
        ));
    }
    copies.push((
        image.join(format!("boot/vmlinuz-{abi}")),
        work.join("vmlinuz"),
    ));
    for (from, to) in &copies {
        fs::create_dir_all(to.parent().expect("a parent"))?;
        fs::copy(from, to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    // depmod wants these index files; the built-in lists are the image's own.
    fs::write(modules.join(&kernel_modules).join("modules.order"), "")?;
    for index in ["modules.builtin", "modules.builtin.modinfo"] {
        fs::copy(
            image.join(&kernel_modules).join(index),
            modules.join(&kernel_modules).join(index),
        )
        .with_context(|| format!("copying {index} of the image"))?;
    }
    run("depmod", &["-b", &modules.to_string_lossy(), &abi])?;
    fs::rename(work.join("vmlinuz"), dir.join("vmlinuz"))?;
    fs::remove_dir_all(&work)?;
    fs::write(dir.join("abi"), format!("{abi}\n"))?;
    fs::write(dir.join(GUEST_MODULES_STAMP), guest_modules_stamp())?;
    Ok(())
}

/// The simulated hardware-timestamping NIC pair of the guest tests
/// (testing/hwtstamp-veth/, tests/integration/hwtstamp.rs), as a module name and its sources.
pub(crate) const HWTSTAMP_MODULE: &str = "hwtstamp_veth";
const HWTSTAMP_SOURCES: &[&str] = &["Makefile", "hwtstamp_veth.c"];

/// Builds testing/hwtstamp-veth/ against the guest kernel's Debian headers
/// (`linux-headers-<abi>`, installed by [`jool_guest`] for jool-dkms; the module's Makefile
/// makes its warnings errors) in `~/.cache/network-probe/jool/hwtstamp-veth/`, and installs
/// the module into the guest's module tree (`extra/`, depmod rerun) so the tests can
/// `modprobe` it. The build directory keeps a copy of the sources it was built from: when they
/// and the ABI equal the repository's and the guest's, nothing is rebuilt (about 5 s when they
/// differ). Returns the module's path in the cache.
pub(crate) fn hwtstamp_module(root: &Path, abi: &str) -> Result<PathBuf> {
    let headers = PathBuf::from(format!("/usr/src/linux-headers-{abi}"));
    hwtstamp_module_for(root, &cache_dir().join("jool"), abi, &Kbuild::Kdir(headers))
}

/// How to build an out-of-tree module against a kernel's headers.
pub(crate) enum Kbuild {
    /// Installed headers: the module's Makefile with `KDIR=`.
    Kdir(PathBuf),
    /// Unpacked Debian headers (source tree `-common`, object tree `<abi>`): Kbuild with `-C`,
    /// `O=` and `M=` (crate::newer_guest).
    Trees { source: PathBuf, object: PathBuf },
}

/// [`hwtstamp_module`] for the guest prepared in `guest` (its module tree in `modules/`).
pub(crate) fn hwtstamp_module_for(
    root: &Path,
    guest: &Path,
    abi: &str,
    kbuild: &Kbuild,
) -> Result<PathBuf> {
    let source = root.join("testing/hwtstamp-veth");
    let build = guest.join("hwtstamp-veth");
    let module = build.join(format!("{HWTSTAMP_MODULE}.ko"));
    let same = |name: &str| -> bool {
        match (fs::read(source.join(name)), fs::read(build.join(name))) {
            (Ok(ours), Ok(built)) => ours == built,
            _ => false,
        }
    };
    let current = module.is_file()
        && fs::read_to_string(build.join("abi")).is_ok_and(|built| built.trim() == abi)
        && HWTSTAMP_SOURCES.iter().all(|name| same(name));
    if !current {
        let (headers, make_args) = match kbuild {
            Kbuild::Kdir(headers) => (headers, vec![format!("KDIR={}", headers.display())]),
            Kbuild::Trees { source, object } => (
                source,
                vec![
                    "-C".to_string(),
                    source.display().to_string(),
                    format!("O={}", object.display()),
                    format!("M={}", build.display()),
                    "modules".to_string(),
                ],
            ),
        };
        if !headers.join("Makefile").is_file() {
            bail!(
                "{} is missing (linux-headers-{abi}); run `cargo xtask bootstrap --test-peers`",
                headers.display()
            );
        }
        eprintln!("xtask: building {HWTSTAMP_MODULE}.ko for {abi} (testing/hwtstamp-veth)");
        let _ = fs::remove_dir_all(&build);
        fs::create_dir_all(&build).with_context(|| format!("creating {}", build.display()))?;
        for name in HWTSTAMP_SOURCES {
            fs::copy(source.join(name), build.join(name))
                .with_context(|| format!("copying {}", source.join(name).display()))?;
        }
        let status = Command::new("make")
            .arg("-s")
            .args(&make_args)
            .current_dir(&build)
            .status()
            .context("starting make (the kernel module build)")?;
        if !status.success() || !module.is_file() {
            bail!("building testing/hwtstamp-veth against {abi} failed ({status}); see above");
        }
        fs::write(build.join("abi"), format!("{abi}\n"))?;
    }
    let tree = guest.join("modules");
    let installed = tree
        .join(format!("lib/modules/{abi}/extra"))
        .join(format!("{HWTSTAMP_MODULE}.ko"));
    if fs::read(&installed).ok() != Some(fs::read(&module)?) {
        fs::create_dir_all(installed.parent().expect("a parent"))?;
        fs::copy(&module, &installed)
            .with_context(|| format!("copying the module to {}", installed.display()))?;
        run("depmod", &["-b", &tree.to_string_lossy(), abi])?;
    }
    Ok(module)
}

/// The module files (paths relative to `lib/modules/<abi>/`) that loading `names` takes,
/// dependencies included, from the text of a `modules.dep` (`path: dependency paths...`).
/// Names match file stems with `-` read as `_`, as modprobe does.
pub(crate) fn module_closure(modules_dep: &str, names: &[&str]) -> Result<Vec<String>> {
    let module_name = |path: &str| {
        let file = path.rsplit('/').next().unwrap_or(path);
        let stem = file.split(".ko").next().unwrap_or(file);
        stem.replace('-', "_")
    };
    let mut files = Vec::new();
    for name in names {
        let line = modules_dep
            .lines()
            .find(|line| {
                line.split_once(':')
                    .is_some_and(|(path, _)| module_name(path) == name.replace('-', "_"))
            })
            .with_context(|| format!("module {name} is not in the image's modules.dep"))?;
        let (path, dependencies) = line.split_once(':').expect("found by its colon");
        for file in std::iter::once(path).chain(dependencies.split_whitespace()) {
            if !files.iter().any(|known| known == file) {
                files.push(file.to_string());
            }
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::module_closure;

    const MODULES_DEP: &str = "kernel/drivers/net/veth.ko:
kernel/net/netfilter/nft_numgen.ko: kernel/net/netfilter/nf_tables.ko kernel/net/netfilter/nfnetlink.ko kernel/lib/libcrc32c.ko
kernel/net/netfilter/nf_tables.ko: kernel/net/netfilter/nfnetlink.ko kernel/lib/libcrc32c.ko
kernel/net/netfilter/nfnetlink.ko:
kernel/lib/libcrc32c.ko:
kernel/net/sched/sch_ingress.ko.xz:
";

    #[test]
    fn resolves_dependencies_once_each() {
        assert_eq!(
            module_closure(MODULES_DEP, &["veth", "nft_numgen", "nf_tables"]).unwrap(),
            [
                "kernel/drivers/net/veth.ko",
                "kernel/net/netfilter/nft_numgen.ko",
                "kernel/net/netfilter/nf_tables.ko",
                "kernel/net/netfilter/nfnetlink.ko",
                "kernel/lib/libcrc32c.ko",
            ]
        );
    }

    #[test]
    fn matches_compressed_files_and_dashes() {
        assert_eq!(
            module_closure(MODULES_DEP, &["sch-ingress"]).unwrap(),
            ["kernel/net/sched/sch_ingress.ko.xz"]
        );
    }

    #[test]
    fn names_a_missing_module() {
        let err = module_closure(MODULES_DEP, &["cls_bpf"]).unwrap_err();
        assert!(err.to_string().contains("cls_bpf"), "{err}");
    }
}
