//! `cargo xtask`: the developer entry points. `run`, `test` and `bench` first bootstrap what
//! the build and the tests need (see [`bootstrap`]), then build and start the daemon, run every
//! check, or run the benchmarks and write their report (see [`bench`]).

mod bench;
mod bootstrap;
mod deb;
mod fuzz;
mod kernel_vm;
mod layers;
mod newer_guest;

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "network-probe developer tasks")]
struct Args {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Bootstrap the toolchain, build in release mode and start the daemon (as root).
    /// Arguments after `--` go to the daemon.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        daemon_args: Vec<String>,
    },
    /// Bootstrap the toolchain and the Debian test peers, then run rustfmt, clippy (host and
    /// eBPF target) and every test (as root: the tests create network namespaces).
    Test {
        /// Extra arguments for `cargo test` (a test name filter, `--nocapture`, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_test_args: Vec<String>,
    },
    /// Run the datapath integration tests (see kernel_vm::GUEST_TESTS) inside a qemu guest
    /// booting Debian's stable kernel (6.1, without TCX); `cargo xtask test` does it too, after
    /// the host tests.
    KernelTest {
        /// Extra arguments for each test executable (a test name filter, `--nocapture`, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        test_args: Vec<String>,
    },
    /// Bootstrap the toolchain and the Debian test peers, run every benchmark in
    /// network-probe/benches/ (as root: they load eBPF programs and create network namespaces)
    /// and write their reports, under a header naming the machine, to BENCHMARKS.md.
    /// Refuses to run while a `NETWORK_PROBE_BENCH_*` selection variable is set (inherited from
    /// the shell, it would drop sections silently) unless --keep-selection is given; then the
    /// report names them.
    Bench {
        /// Keep the `NETWORK_PROBE_BENCH_*` variables of the environment (a partial run); the
        /// report's header lists them.
        #[arg(long)]
        keep_selection: bool,
    },
    /// Run only the soak benchmark (network-probe/benches/soak.rs, as root): the daemon under
    /// 100k live flows, flow churn, concurrent scrapers and probe bursts, then its memory, fds
    /// and threads compared with the start; fails when they grow or a request fails.
    Soak {
        /// Duration of the load, warm-up included.
        #[arg(long, default_value_t = 180, value_parser = clap::value_parser!(u64).range(60..))]
        seconds: u64,
    },
    /// Run the libFuzzer targets in fuzz/ (cargo-fuzz, nightly): every target, or the one named,
    /// each for --seconds; new inputs join its corpus (fuzz/corpus/<target>/, minimized after
    /// the run) and a summary table is printed. A crash fails it, naming the input.
    Fuzz {
        /// A target name (see fuzz/fuzz_targets/); default: all of them in turn.
        target: Option<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only replay every target's corpus as `cargo xtask test` does (no long run).
        #[arg(long, conflicts_with_all = ["target", "seconds"])]
        replay: bool,
    },
    /// Bootstrap the toolchain and cargo-deb, build in release mode and package the daemon as
    /// target/debian/network-probe_<version>-1_<arch>.deb (see docs/deployment.md).
    Deb,
    /// Write the manual page generated from the daemon's clap definitions (clap_mangen, see
    /// network-probe/src/cli/man.rs) to target/release/network-probe.8 and .8.gz; `deb` does
    /// it too and ships the .gz as /usr/share/man/man8/network-probe.8.gz.
    Man,
    /// Check that the daemon's modules use only lower layers (see xtask/src/layers.rs);
    /// `cargo xtask test` does it first.
    Layers,
    /// Only bootstrap (toolchain, and with --test-peers the Debian packages the tests use).
    Bootstrap {
        #[arg(long)]
        test_peers: bool,
    },
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let root = workspace_root();
    match args.command {
        Task::Layers => layers::check(&root),
        Task::Bootstrap { test_peers } => {
            let toolchain = timed_bootstrap(test_peers)?;
            println!("bpf-linker: {}", toolchain.bpf_linker_dir.display());
            Ok(())
        }
        Task::Deb => {
            let toolchain = timed_bootstrap(false)?;
            let cargo_deb = deb::ensure_cargo_deb(&bootstrap::cache_dir())?;
            let mut release_build = cargo(&root, &toolchain);
            release_build.args(["build", "--release", "--package", "network-probe"]);
            let status = release_build
                .status()
                .context("starting cargo build --release")?;
            if !status.success() {
                bail!("cargo build --release failed with {status}");
            }
            deb::man_page(&root, cargo(&root, &toolchain))?;
            let package = deb::package(&root, &cargo_deb)?;
            println!("{}", package.display());
            Ok(())
        }
        Task::Man => {
            let toolchain = timed_bootstrap(false)?;
            let page = deb::man_page(&root, cargo(&root, &toolchain))?;
            println!("{}", page.display());
            Ok(())
        }
        Task::Run { daemon_args } => {
            let toolchain = timed_bootstrap(false)?;
            cargo(&root, &toolchain)
                .args(["build", "--release", "--package", "network-probe"])
                .status_ok()?;
            let binary = root.join("target/release/network-probe");
            mount_bpffs_if_missing()?;
            let err = Command::new(&binary).args(daemon_args).exec();
            bail!("starting {}: {err}", binary.display())
        }
        Task::Test { cargo_test_args } => {
            require_root(
                "test",
                "the tests create network namespaces and load eBPF programs",
            )?;
            let toolchain = timed_bootstrap(true)?;
            layers::check(&root)?;
            cargo(&root, &toolchain)
                .args(["fmt", "--all", "--check"])
                .status_ok()?;
            cargo(&root, &toolchain)
                .args([
                    "clippy",
                    "--workspace",
                    "--exclude",
                    "network-probe-ebpf",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ])
                .status_ok()?;
            cargo(&root, &toolchain)
                .args([
                    "+nightly",
                    "clippy",
                    "--package",
                    "network-probe-ebpf",
                    "--target",
                    "bpfel-unknown-none",
                    "-Z",
                    "build-std=core",
                    "--",
                    "-D",
                    "warnings",
                ])
                .status_ok()?;
            // Every fuzz target replays its committed corpus (past crash inputs included) and
            // fuzzes a little beyond (`cargo xtask fuzz` runs them for longer). Before the
            // tests, so the test runner's summary closes the output.
            let cargo_fuzz = fuzz::ensure_cargo_fuzz(&bootstrap::cache_dir())?;
            fuzz::Fuzzer {
                cargo: &|| cargo(&root, &toolchain),
                root: &root,
                cargo_fuzz_bin: &cargo_fuzz,
            }
            .replay_all()?;
            cargo(&root, &toolchain)
                .args(["test", "--workspace", "--exclude", "network-probe-ebpf"])
                .args(cargo_test_args)
                .status_ok()?;
            // The datapath tests again on a kernel without TCX (qemu guest).
            kernel_vm::run(cargo(&root, &toolchain), &root, &[])
        }
        Task::KernelTest { test_args } => {
            require_root(
                "kernel-test",
                "the guest kernel's test files are prepared by the bootstrap as root",
            )?;
            let toolchain = timed_bootstrap(true)?;
            kernel_vm::run(cargo(&root, &toolchain), &root, &test_args)
        }
        Task::Soak { seconds } => {
            require_root(
                "soak",
                "the soak loads eBPF programs and creates network namespaces",
            )?;
            let toolchain = timed_bootstrap(true)?;
            // The benchmark prints its markdown section on stdout; the duration goes through
            // the environment (benches/soak.rs reads NETWORK_PROBE_SOAK_SECONDS).
            cargo(&root, &toolchain)
                .args(["bench", "-p", "network-probe", "--bench", "soak"])
                .env("NETWORK_PROBE_SOAK_SECONDS", seconds.to_string())
                .status_ok()
        }
        Task::Fuzz {
            target,
            seconds,
            replay,
        } => {
            let toolchain = timed_bootstrap(false)?;
            let cargo_fuzz = fuzz::ensure_cargo_fuzz(&bootstrap::cache_dir())?;
            let fuzzer = fuzz::Fuzzer {
                cargo: &|| cargo(&root, &toolchain),
                root: &root,
                cargo_fuzz_bin: &cargo_fuzz,
            };
            if replay {
                return fuzzer.replay_all();
            }
            let targets = match target {
                Some(target) => vec![target],
                None => fuzz::targets(&root)?,
            };
            fuzzer.fuzz_all(&targets, seconds)
        }
        Task::Bench { keep_selection } => {
            require_root(
                "bench",
                "the benchmarks load eBPF programs and create network namespaces",
            )?;
            let selection = bench::selection_variables(std::env::vars());
            if !selection.is_empty() && !keep_selection {
                bail!(
                    "{} set in the environment: the benchmarks would run only part of their \
                     sections. Unset it, or pass --keep-selection for a partial report that \
                     names it",
                    selection.join(", ")
                );
            }
            // Several benchmarks drive Debian peers (iperf3, tcpdump, tftpd-hpa, the Jool guest).
            let toolchain = timed_bootstrap(true)?;
            // The report names the revision checked out when the run starts. Each benchmark is
            // built as its turn comes, so a commit or an edit during the run (about 20 minutes)
            // reaches the later ones: the report says so.
            let revision_at_start = git_revision(&root);
            let modified_at_start = git_tree_modified(&root);
            let mut report = String::new();
            let mut failed = Vec::new();
            for target in bench_targets(&root)? {
                eprintln!("xtask: benchmark {target}");
                // Each benchmark prints its markdown section on stdout; cargo's own output and
                // the benchmark's progress stay on stderr.
                let output = cargo(&root, &toolchain)
                    .args(["bench", "-p", "network-probe", "--bench", &target])
                    .stderr(Stdio::inherit())
                    .output()
                    .with_context(|| format!("starting cargo bench --bench {target}"))?;
                let section = String::from_utf8_lossy(&output.stdout);
                print!("{section}");
                if section.trim().is_empty() {
                    report.push_str(&format!(
                        "## {target}\n\n**The {target} benchmark printed nothing: its section \
                         is missing.**\n\n"
                    ));
                    if output.status.success() {
                        failed.push(target);
                    }
                    continue;
                }
                // A section without its own heading gets one naming its benchmark.
                if !section.trim_start().starts_with('#') {
                    report.push_str(&format!("## {target}\n\n"));
                }
                report.push_str(section.trim_end());
                report.push_str("\n\n");
                if !output.status.success() {
                    report.push_str(&format!(
                        "**The {target} benchmark failed ({}); its section is incomplete.**\n\n",
                        output.status
                    ));
                    failed.push(target);
                }
            }
            let revision = revision_at_start.map(|revision| {
                let mut described = revision.clone();
                if modified_at_start {
                    described.push_str(" with uncommitted changes");
                }
                if git_revision(&root).as_ref() != Some(&revision) {
                    described.push_str(" (HEAD moved during the run)");
                } else if !modified_at_start && git_tree_modified(&root) {
                    described.push_str(" (files edited during the run)");
                }
                described
            });
            if !selection.is_empty() {
                report.insert_str(
                    0,
                    &format!(
                        "**Partial run: {} (only the sections they select; see each \
                         benchmark).**\n\n",
                        selection.join(", ")
                    ),
                );
            }
            let path = bench::write_report(&root, revision.as_deref(), &report)?;
            eprintln!("xtask: wrote {}", path.display());
            if !failed.is_empty() {
                bail!("benchmarks failed: {}", failed.join(", "));
            }
            Ok(())
        }
    }
}

/// The benchmark targets, one per `network-probe/benches/*.rs`: `datapath` first, then the
/// others by name.
fn bench_targets(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("network-probe/benches");
    let mut targets = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|ext| ext == "rs")
            && let Some(stem) = path.file_stem().and_then(|stem| stem.to_str())
        {
            targets.push(stem.to_string());
        }
    }
    targets.sort_by_key(|name| (name != "datapath", name.clone()));
    Ok(targets)
}

/// Mounts bpffs at /sys/fs/bpf when nothing is mounted there (systemd hosts have it; minimal VMs
/// and containers may not), so the daemon's default `--datapath.pin-path` works under
/// `cargo xtask run`. The daemon itself never mounts anything: it names the fix instead.
fn mount_bpffs_if_missing() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&"/sys/fs/bpf") && fields.get(2) == Some(&"bpf")
    });
    if !mounted {
        eprintln!("xtask: mounting bpffs at /sys/fs/bpf (the daemon pins its maps there)");
        Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .status_ok()?;
    }
    Ok(())
}

/// Fails unless running as root, naming the task and why it needs root.
fn require_root(task: &str, why: &str) -> Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc_geteuid() } != 0 {
        bail!("cargo xtask {task} needs root: {why} (run it with sudo -E)");
    }
    Ok(())
}

fn timed_bootstrap(test_peers: bool) -> Result<bootstrap::Toolchain> {
    let start = Instant::now();
    let toolchain = bootstrap::toolchain()?;
    if test_peers {
        bootstrap::test_peers()?;
    }
    eprintln!(
        "xtask: bootstrap checked in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    Ok(toolchain)
}

/// A `cargo` command in the workspace with bpf-linker on PATH and the git revision exported
/// for the daemon's build-info metric.
fn cargo(root: &Path, toolchain: &bootstrap::Toolchain) -> Command {
    // The rustup proxy on PATH, so `cargo +nightly ...` works.
    let mut command = Command::new("cargo");
    command.current_dir(root);
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![toolchain.bpf_linker_dir.clone()];
    dirs.extend(std::env::split_paths(&path));
    command.env(
        "PATH",
        std::env::join_paths(dirs).expect("PATH entries are valid"),
    );
    // Let each command pick its toolchain (`+nightly` or the workspace default).
    command.env_remove("RUSTUP_TOOLCHAIN");
    command.env_remove("CARGO");
    if let Some(revision) = git_revision(root) {
        command.env("NETWORK_PROBE_GIT_REVISION", revision);
    }
    command
}

fn git_revision(root: &Path) -> Option<String> {
    let output = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Whether tracked files differ from HEAD (read-only: does not refresh the index).
fn git_tree_modified(root: &Path) -> bool {
    Command::new("git")
        .args(["diff-index", "--quiet", "HEAD", "--"])
        .current_dir(root)
        .status()
        .is_ok_and(|status| status.code() == Some(1))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Runs a command and fails with its command line when it does not exit 0.
trait StatusOk {
    fn status_ok(&mut self) -> Result<()>;
}

impl StatusOk for Command {
    fn status_ok(&mut self) -> Result<()> {
        let status = self
            .status()
            .with_context(|| format!("starting {:?}", self.get_program()))?;
        if !status.success() {
            bail!("{self:?} failed with {status}");
        }
        Ok(())
    }
}
