//! The datapath integration tests (and the guest-only suites) on an older kernel: Debian's stable kernel (6.1, without
//! TCX, so the daemon attaches classic cls_bpf filters over netlink), booted under qemu. TCG,
//! not KVM: the build machines' KVM only runs PVM guests.
//!
//! The guest is a busybox initramfs holding the `integration` test executable, the daemon and
//! the tools of [`GUEST_TOOLS`] (with the shared libraries `ldd` lists), each at its host path:
//! the test kit finds the daemon next to the test executable's `deps/` directory. Its `/init`
//! mounts the pseudo file systems, loads [`crate::bootstrap::GUEST_MODULES`], runs the
//! executable once per suite of [`GUEST_TESTS`] with `--test-threads=1` and that suite's tests
//! (listed on the host, `--exact`), and prints `@@EXIT <suite> <status>` on the serial console;
//! the host reads the console and fails naming every suite whose run did not exit 0.
//!
//! Suites of [`GUEST_ONLY_SUITES`] (hwtstamp: the simulated hardware-timestamping NIC of
//! testing/hwtstamp-veth, which only the guest has) are `#[ignore]`d on the host and run here
//! with `--include-ignored`.
//!
//! The kernel and its module tree come from the bootstrap
//! ([`crate::bootstrap::jool_guest`]), in `~/.cache/network-probe/jool/`; the run adds
//! hwtstamp_veth.ko to that tree first ([`crate::bootstrap::hwtstamp_module`], rebuilt only
//! when its sources change).
//!
//! A second boot runs [`NEWER_GUEST_TESTS`] on Debian's newer kernel (bookworm-backports,
//! [`crate::newer_guest`]); each boot's kernel gets the features it lacks declared to the
//! tests ([`absent_features`]: a case needing one prints `@@NOT-APPLICABLE` and the summary
//! counts it; an undeclared one fails).
//! `cargo xtask test` runs this after the host tests; `cargo xtask kernel-test` runs it alone.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Suites of the integration tests (modules of network-probe/tests/integration/, test names
/// `<suite>::...`) run in the guest, in this order.
/// flows (TC over cls_bpf, XDP generic and native mode), churn (re-attach through cls_bpf
/// after an interface is re-created) and pressure run here as on the host: 6.1 has no TCX,
/// so they show the netlink path. drops and outcomes show the kfree_skb reasons under 6.1's
/// numbering (names read from the running kernel) and the nft reject modules' ICMP errors.
pub(crate) const GUEST_TESTS: &[&str] = &[
    "datapath",
    "restart",
    "flows",
    "churn",
    "pressure",
    "hwtstamp",
    "ecn",
    "pmtu",
    "drops",
    "outcomes",
    "passive_rtt",
];

/// Kernel features the guest's kernel lacks, declared to the tests in
/// `NETWORK_PROBE_TEST_NOT_APPLICABLE` (network-probe-testkit `applicability`): a case that
/// needs one is printed and counted as not applicable (`@@NOT-APPLICABLE` lines, named in the
/// summary); an undeclared missing feature fails the case. TCX came in 6.6.
fn absent_features(abi: &str) -> Vec<&'static str> {
    let mut numbers = abi
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    // Every guest is emulated (TCG): a capture's stamps and the TC hooks' are milliseconds apart.
    let mut absent = vec!["wire-timing"];
    if version < (6, 6) {
        absent.push("tcx");
    }
    absent
}

/// Suites run again in a second boot on Debian's newer kernel ([`crate::newer_guest`],
/// bookworm-backports' 6.12 when written): the simulated NIC's `ndo_hwtstamp_set/get` path.
pub(crate) const NEWER_GUEST_TESTS: &[&str] = &["hwtstamp"];

/// Guest suites whose tests are `#[ignore]`d on the host (they need a kernel module only the
/// guest has): the guest runs them with `--include-ignored`.
/// passive_rtt's netem case is ignored on the host (which may lack sch_netem) and runs here.
const GUEST_ONLY_SUITES: &[&str] = &["hwtstamp", "passive_rtt"];

/// Programs the tests run, copied from the host at the path PATH finds them.
const GUEST_TOOLS: &[&str] = &[
    "ip", "tc", "sysctl", "setpriv", "nstat", "ethtool", "tcpdump", "nft", "bpftool",
    // pressure checks both exposition formats with it (48 MB, static).
    "promtool",
];

/// How much slower than the host the guest is expected to be (TCG emulation); exported to
/// the tests as `NETWORK_PROBE_TEST_SLOWDOWN`, which the test kit (network-probe-testkit) scales its waits by.
const SLOWDOWN: u32 = 5;

const GUEST_MEMORY_MB: u32 = 2048;
const GUEST_CPUS: u32 = 2;
/// Boot to `/init`, module loading and power-off.
const BOOT_LIMIT: Duration = Duration::from_secs(120);
/// One suite's run, enforced inside the guest (busybox `timeout`).
const TEST_LIMIT: Duration = Duration::from_secs(900);

/// Builds the guest tests, boots the guest and runs them; `cargo_test` is a `cargo` command in
/// the workspace (with bpf-linker on PATH), `test_args` go to every suite's run (a name filter
/// narrows the suites' tests, `--nocapture`, ...).
pub(crate) fn run(mut cargo_test: Command, root: &Path, test_args: &[String]) -> Result<()> {
    let guest = crate::bootstrap::cache_dir().join("jool");
    let abi = fs::read_to_string(guest.join("abi"))
        .map(|abi| abi.trim().to_string())
        .with_context(|| {
            format!(
                "{} has no guest kernel; run `cargo xtask bootstrap --test-peers`",
                guest.display()
            )
        })?;
    // Installed into the guest's module tree, which the initramfs copies below.
    crate::bootstrap::hwtstamp_module(root, &abi)?;
    let newer = crate::newer_guest::prepare()?;
    crate::bootstrap::hwtstamp_module_for(
        root,
        &newer.dir,
        &newer.abi,
        &crate::bootstrap::Kbuild::Trees {
            source: newer.source_tree.clone(),
            object: newer.object_tree.clone(),
        },
    )?;
    let built = build(&mut cargo_test, test_args)?;
    let mut failed = Vec::new();
    for (dir, abi, names) in [
        (&guest, &abi, GUEST_TESTS),
        (&newer.dir, &newer.abi, NEWER_GUEST_TESTS),
    ] {
        let suites = built.suites(names);
        if suites.is_empty() {
            continue;
        }
        failed.extend(
            boot_and_run(dir, abi, &built, &suites, root, test_args)?
                .into_iter()
                .map(|failure| format!("{failure} on {abi}")),
        );
    }
    if !failed.is_empty() {
        bail!(
            "in the qemu guests these test suites failed: {}",
            failed.join("; ")
        );
    }
    Ok(())
}

/// Boots the guest kernel of `guest` (`vmlinuz`, `modules/lib`) with an initramfs running
/// `suites`; returns the failures [`Outcome::failed`] names.
fn boot_and_run(
    guest: &Path,
    abi: &str,
    artefacts: &Artefacts,
    suites: &[GuestSuite],
    root: &Path,
    test_args: &[String],
) -> Result<Vec<String>> {
    let staging = StagingDir::new()?;
    let rootfs = staging.0.join("root");
    for dir in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "etc", "tmp", "run", "root",
    ] {
        fs::create_dir_all(rootfs.join(dir))?;
    }
    copy_file(Path::new("/bin/busybox"), &rootfs.join("bin/busybox"))?;
    for tool in GUEST_TOOLS {
        let path = find_program(tool)?;
        install_with_libraries(&rootfs, &path, &path, false)?;
    }
    install_with_libraries(&rootfs, &artefacts.daemon, &artefacts.daemon, true)?;
    install_with_libraries(&rootfs, &artefacts.tests, &artefacts.tests, true)?;
    // The tests run where cargo runs them: in the package directory.
    let package_dir = root.join("network-probe");
    fs::create_dir_all(rootfs.join(package_dir.strip_prefix("/").unwrap_or(&package_dir)))?;
    copy_tree(&guest.join("modules/lib"), &rootfs.join("lib"))?;
    // Debian's tcpdump drops root for the `tcpdump` user; setpriv tests use 65534.
    fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\ntcpdump:x:100:101::/:/bin/false\n\
         nobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    fs::write(
        rootfs.join("etc/group"),
        "root:x:0:\ntcpdump:x:101:\nnogroup:x:65534:\n",
    )?;
    let init = rootfs.join("init");
    fs::write(
        &init,
        init_script(suites, &package_dir, test_args, &absent_features(abi)),
    )?;
    chmod_executable(&init)?;
    let initrd = staging.0.join("initrd.cpio");
    let packed = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet > \"$1\"")
        .arg("sh")
        .arg(&initrd)
        .current_dir(&rootfs)
        .status()
        .context("starting cpio")?;
    if !packed.success() {
        bail!("packing the guest initramfs failed with {packed}");
    }
    let initrd_bytes = fs::metadata(&initrd)?.len();
    eprintln!(
        "xtask: booting kernel {abi} under qemu (TCG, {GUEST_CPUS} CPUs, {GUEST_MEMORY_MB} MB, \
         initramfs {} MB) for {}",
        initrd_bytes / 1_000_000,
        suites
            .iter()
            .map(|suite| format!("{} ({} tests)", suite.name, suite.tests.len()))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let started = Instant::now();
    let (console, init_reached) = boot(&guest.join("vmlinuz"), &initrd, suites.len())?;
    let wall = started.elapsed();
    let outcome = Outcome::parse(&console, suites);
    eprintln!("{}", outcome.summary(abi, wall, init_reached));
    Ok(outcome.failed())
}

/// What `cargo test --no-run` built: the daemon, the integration test executable, and the
/// tests the caller's arguments select.
struct Artefacts {
    daemon: PathBuf,
    tests: PathBuf,
    selected: Vec<String>,
}

impl Artefacts {
    /// The suites of `names` with their selected tests (suites without one left out).
    fn suites(&self, names: &[&str]) -> Vec<GuestSuite> {
        names
            .iter()
            .map(|suite| GuestSuite {
                name: suite.to_string(),
                executable: self.tests.clone(),
                tests: self
                    .selected
                    .iter()
                    .filter(|test| test.starts_with(&format!("{suite}::")))
                    .cloned()
                    .collect(),
            })
            .filter(|suite| !suite.tests.is_empty())
            .collect()
    }
}

/// One suite of [`GUEST_TESTS`]: one run of the test executable in the guest.
struct GuestSuite {
    name: String,
    executable: PathBuf,
    /// Full names of the suite's tests that the extra test arguments select.
    tests: Vec<String>,
}

/// Builds (or finds up to date) the integration tests and the daemon, reading the executables'
/// paths from cargo's JSON messages, and lists each guest suite's tests.
fn build(cargo_test: &mut Command, test_args: &[String]) -> Result<Artefacts> {
    cargo_test.args([
        "test",
        "--no-run",
        "--message-format=json-render-diagnostics",
        "--package",
        "network-probe",
        "--test",
        "integration",
    ]);
    let output = cargo_test
        .stderr(Stdio::inherit())
        .output()
        .context("starting cargo test --no-run")?;
    if !output.status.success() {
        bail!(
            "cargo test --no-run for the guest tests failed with {}",
            output.status
        );
    }
    let mut daemon = None;
    let mut tests = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(executable) = message["executable"].as_str() else {
            continue;
        };
        let name = message["target"]["name"].as_str().unwrap_or_default();
        let kinds = message["target"]["kind"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if kinds.iter().any(|kind| kind == "bin") && name == "network-probe" {
            daemon = Some(PathBuf::from(executable));
        } else if kinds.iter().any(|kind| kind == "test") && name == "integration" {
            tests = Some(PathBuf::from(executable));
        }
    }
    let daemon = daemon.context("cargo reported no network-probe binary")?;
    let tests = tests.context("cargo reported no executable for the test integration")?;
    let selected = list_tests(&tests, test_args)?;
    let artefacts = Artefacts {
        daemon,
        tests,
        selected,
    };
    if artefacts.suites(GUEST_TESTS).is_empty() && artefacts.suites(NEWER_GUEST_TESTS).is_empty() {
        bail!(
            "no test of the guest suites ({}) matches {test_args:?}",
            GUEST_TESTS.join(", ")
        );
    }
    Ok(artefacts)
}

/// The tests `test_args` select, as the executable itself lists them (`--list`, on the host).
/// libtest ORs name filters, so the guest runs each suite with its own tests named `--exact`
/// rather than with a suite filter next to the caller's filter.
fn list_tests(executable: &Path, test_args: &[String]) -> Result<Vec<String>> {
    let output = Command::new(executable)
        .args(test_args)
        .arg("--list")
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting {} --list", executable.display()))?;
    if !output.status.success() {
        bail!(
            "{} --list failed with {}",
            executable.display(),
            output.status
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.strip_suffix(": test"))
        .map(str::to_string)
        .collect())
}

/// The guest's `/init` (busybox sh): file systems, modules, then each suite's run of the test
/// executable between `@@BEGIN`/`@@EXIT` markers with the guest's uptime around it. /tmp and /run stay on the
/// initramfs (writable): a tmpfs there would hide a workspace staged below them.
fn init_script(
    suites: &[GuestSuite],
    package_dir: &Path,
    test_args: &[String],
    absent: &[&str],
) -> String {
    let mut script = String::from(
        "#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
ip link set lo up
read uptime rest < /proc/uptime
echo \"@@INIT $(uname -r) uptime=$uptime\"
",
    );
    for module in crate::bootstrap::GUEST_MODULES {
        let _ = writeln!(
            script,
            "modprobe {module} || echo \"@@MODPROBE-FAILED {module}\""
        );
    }
    let args: Vec<String> = test_args.iter().map(|arg| shell_quote(arg)).collect();
    for suite in suites {
        let tests: Vec<String> = suite.tests.iter().map(|test| shell_quote(test)).collect();
        let ignored = if GUEST_ONLY_SUITES.contains(&suite.name.as_str()) {
            " --include-ignored"
        } else {
            ""
        };
        let _ = write!(
            script,
            "cd {package}
read start rest < /proc/uptime
echo \"@@BEGIN {name}\"
NETWORK_PROBE_TEST_SLOWDOWN={SLOWDOWN} NETWORK_PROBE_TEST_NOT_APPLICABLE={absent} RUST_BACKTRACE=1 timeout {limit} {executable} \
--test-threads=1{ignored} {args} --exact {tests} 2>&1
status=$?
read end rest < /proc/uptime
echo \"@@EXIT {name} $status start=$start end=$end\"
",
            package = shell_quote(&package_dir.to_string_lossy()),
            limit = TEST_LIMIT.as_secs(),
            name = suite.name,
            executable = shell_quote(&suite.executable.to_string_lossy()),
            args = args.join(" "),
            tests = tests.join(" "),
            absent = shell_quote(&absent.join(",")),
        );
    }
    script.push_str("echo @@DONE\npoweroff -f\n");
    script
}

/// Boots the guest and returns its console, echoing it line by line, and how long after
/// starting qemu `/init` reported in; bounded by [`BOOT_LIMIT`] plus [`TEST_LIMIT`] per test
/// executable.
fn boot(vmlinuz: &Path, initrd: &Path, tests: usize) -> Result<(String, Option<Duration>)> {
    let limit = BOOT_LIMIT + TEST_LIMIT * tests as u32;
    let started = Instant::now();
    let mut init_reached = None;
    let mut child = Command::new("timeout")
        .args(["--kill-after=10", &limit.as_secs().to_string()])
        .args(["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max"])
        .args(["-m", &GUEST_MEMORY_MB.to_string()])
        .args(["-smp", &GUEST_CPUS.to_string()])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 loglevel=1 quiet rdinit=/init",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (installed by the bootstrap)")?;
    let mut console = String::new();
    let stdout = child.stdout.take().expect("piped");
    for line in BufReader::new(stdout).split(b'\n') {
        let line = line.context("reading the guest console")?;
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches('\r');
        if init_reached.is_none() && line.contains("@@INIT ") {
            init_reached = Some(started.elapsed());
        }
        // Unprefixed, so libtest's closing `test result:` lines read as they do on the host.
        println!("{line}");
        console.push_str(line);
        console.push('\n');
    }
    let status = child.wait()?;
    if status.code() == Some(124) {
        eprintln!(
            "xtask: the guest was stopped after {} s (time limit)",
            limit.as_secs()
        );
    }
    Ok((console, init_reached))
}

/// What the console says about each suite's run.
struct Outcome {
    /// Guest uptime (s) when `/init` started, and the kernel release it reported.
    init: Option<(String, f64)>,
    tests: Vec<TestOutcome>,
    failed_modules: Vec<String>,
}

struct TestOutcome {
    name: String,
    /// Exit status, None when the guest never reported one (crash, time limit).
    status: Option<i32>,
    /// Guest wall time of the suite's run, seconds.
    seconds: Option<f64>,
    /// Names of the test functions libtest reported as FAILED.
    failed_functions: Vec<String>,
    /// The cases that reported themselves not applicable on this kernel (`@@NOT-APPLICABLE`
    /// lines: the case and what the kernel lacks).
    not_applicable: Vec<String>,
}

impl Outcome {
    fn parse(console: &str, suites: &[GuestSuite]) -> Outcome {
        // The firmware's terminal escapes may precede a marker on its line.
        let marker = |line: &str, tag: &str| {
            line.find(tag)
                .map(|at| line[at + tag.len()..].trim().to_string())
        };
        let init = console.lines().find_map(|line| {
            let rest = marker(line, "@@INIT ")?;
            let (release, uptime) = rest.split_once(" uptime=")?;
            Some((release.to_string(), uptime.parse().ok()?))
        });
        let failed_modules = console
            .lines()
            .filter_map(|line| marker(line, "@@MODPROBE-FAILED "))
            .collect();
        let tests = suites
            .iter()
            .map(|GuestSuite { name, .. }| {
                let begin = format!("@@BEGIN {name}");
                let exit = format!("@@EXIT {name} ");
                let section = console
                    .split_once(&begin)
                    .map(|(_, after)| after.split(&exit).next().unwrap_or(after))
                    .unwrap_or_default();
                let failed_functions = failed_functions(section);
                let not_applicable = section
                    .lines()
                    .filter_map(|line| marker(line, "@@NOT-APPLICABLE "))
                    .collect();
                let exit_line = console.lines().find_map(|line| marker(line, &exit));
                let mut fields = exit_line.as_deref().unwrap_or_default().split_whitespace();
                let status = fields.next().and_then(|status| status.parse().ok());
                let field = |fields: &mut std::str::SplitWhitespace, key: &str| {
                    fields.next()?.strip_prefix(key)?.parse::<f64>().ok()
                };
                let start = field(&mut fields, "start=");
                let end = field(&mut fields, "end=");
                TestOutcome {
                    name: name.clone(),
                    status,
                    seconds: start.zip(end).map(|(start, end)| end - start),
                    failed_functions,
                    not_applicable,
                }
            })
            .collect();
        Outcome {
            init,
            tests,
            failed_modules,
        }
    }

    /// One entry per suite whose run did not exit 0, naming its failed functions.
    fn failed(&self) -> Vec<String> {
        let mut failed: Vec<String> = self
            .tests
            .iter()
            .filter(|test| test.status != Some(0))
            .map(|test| match test.status {
                None => format!(
                    "{} (no exit status: the guest crashed or hit its time limit)",
                    test.name
                ),
                Some(status) if test.failed_functions.is_empty() => {
                    format!("{} (exit status {status})", test.name)
                }
                Some(status) => format!(
                    "{} (exit status {status}; failed: {})",
                    test.name,
                    test.failed_functions.join(", ")
                ),
            })
            .collect();
        if !self.failed_modules.is_empty() {
            failed.push(format!(
                "modprobe {} (rerun `cargo xtask bootstrap --test-peers`)",
                self.failed_modules.join(" ")
            ));
        }
        failed
    }

    fn summary(&self, abi: &str, wall: Duration, init_reached: Option<Duration>) -> String {
        let mut text = format!(
            "xtask: kernel {abi} guest: {:.1} s wall",
            wall.as_secs_f64()
        );
        if let Some(init_reached) = init_reached {
            let _ = write!(text, ", /init after {:.1} s", init_reached.as_secs_f64());
        }
        if let Some((release, uptime)) = &self.init {
            let _ = write!(text, " ({uptime:.1} s of guest uptime, {release})");
        }
        for test in &self.tests {
            let status = test.status.map_or_else(
                || "no status".to_string(),
                |status| format!("exit {status}"),
            );
            let seconds = test
                .seconds
                .map_or_else(String::new, |seconds| format!(", {seconds:.1} s"));
            let _ = write!(text, "; {}: {status}{seconds}", test.name);
            if !test.not_applicable.is_empty() {
                let _ = write!(
                    text,
                    ", {} not applicable ({})",
                    test.not_applicable.len(),
                    test.not_applicable.join("; ")
                );
            }
        }
        text
    }
}

/// The test functions libtest lists under its closing `failures:` heading (its per-test
/// `... FAILED` lines may be interleaved with the daemon's stderr).
fn failed_functions(output: &str) -> Vec<String> {
    let lines: Vec<&str> = output.lines().collect();
    let Some(heading) = lines
        .iter()
        .rposition(|line| line.trim_end() == "failures:")
    else {
        return Vec::new();
    };
    lines[heading + 1..]
        .iter()
        .map_while(|line| line.strip_prefix("    "))
        .map(|name| name.trim().to_string())
        .collect()
}

/// Removes the staging directory even when the run fails.
struct StagingDir(PathBuf);

impl StagingDir {
    fn new() -> Result<StagingDir> {
        let path =
            std::env::temp_dir().join(format!("network-probe-kernel-vm-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(StagingDir(path))
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `program` on the host's PATH (system directories first), as a canonical path.
fn find_program(program: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .into_iter()
        .map(PathBuf::from)
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .with_context(|| {
            format!("{program} is not installed (the bootstrap installs the test packages)")
        })
}

/// Copies `binary` to `at` inside `root` (without debug info when `strip_debug`: the guest
/// only needs the code, and the initramfs stays small) with every shared library `ldd` lists,
/// at their paths.
fn install_with_libraries(root: &Path, binary: &Path, at: &Path, strip_debug: bool) -> Result<()> {
    let target = root.join(at.strip_prefix("/").unwrap_or(at));
    if strip_debug {
        fs::create_dir_all(target.parent().expect("a parent"))?;
        let status = Command::new("objcopy")
            .arg("--strip-debug")
            .arg(binary)
            .arg(&target)
            .status()
            .context("starting objcopy")?;
        if !status.success() {
            bail!(
                "objcopy --strip-debug {} failed with {status}",
                binary.display()
            );
        }
    } else {
        copy_file(binary, &target)?;
    }
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .context("starting ldd")?;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|path| path.starts_with('/')) {
            let library = Path::new(path);
            copy_file(
                library,
                &root.join(library.strip_prefix("/").unwrap_or(library)),
            )?;
        }
    }
    Ok(())
}

fn copy_file(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to.parent().expect("a parent"))?;
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            copy_file(&entry.path(), &target)?;
        }
    }
    Ok(())
}

fn chmod_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", path.display()))
}

/// `text` as one single-quoted shell word.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tests() -> Vec<GuestSuite> {
        ["datapath", "restart"]
            .into_iter()
            .map(|name| GuestSuite {
                name: name.into(),
                executable: PathBuf::from("/t/integration-1"),
                tests: vec![format!("{name}::a"), format!("{name}::b")],
            })
            .collect()
    }

    #[test]
    fn parses_statuses_times_and_failed_functions() {
        let console = "\u{1b}c\u{1b}[?7l@@INIT 6.1.0-56-amd64 uptime=2.71
@@BEGIN datapath
running 2 tests
test a ... ok
test b ... daemon: error: something
FAILED
[   12.3] some kernel line

failures:

---- b stdout ----
panicked

failures:
    b

test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out
@@EXIT datapath 101 start=3.10 end=40.60
@@BEGIN restart
test c ... @@NOT-APPLICABLE restart::c: the kernel lacks TCX
ok
@@EXIT restart 0 start=40.70 end=50.70
@@DONE
";
        let outcome = Outcome::parse(console, &tests());
        assert_eq!(outcome.init, Some(("6.1.0-56-amd64".into(), 2.71)));
        assert_eq!(outcome.tests[0].status, Some(101));
        assert_eq!(outcome.tests[0].failed_functions, ["b"]);
        assert!((outcome.tests[0].seconds.unwrap() - 37.5).abs() < 1e-9);
        assert_eq!(outcome.tests[1].status, Some(0));
        assert!(outcome.tests[1].failed_functions.is_empty());
        assert!(outcome.tests[0].not_applicable.is_empty());
        assert_eq!(
            outcome.tests[1].not_applicable,
            ["restart::c: the kernel lacks TCX"]
        );
        assert_eq!(outcome.failed(), ["datapath (exit status 101; failed: b)"]);
        let summary = outcome.summary("6.1", Duration::from_secs(60), None);
        assert!(
            summary.contains(
                "restart: exit 0, 10.0 s, 1 not applicable (restart::c: the kernel lacks TCX)"
            ),
            "{summary}"
        );
    }

    #[test]
    fn a_missing_exit_marker_is_a_failure() {
        let console = "@@INIT 6.1.0-56-amd64 uptime=2.5
@@MODPROBE-FAILED cls_bpf
@@BEGIN datapath
test a ... ok
";
        let outcome = Outcome::parse(console, &tests());
        assert_eq!(outcome.tests[0].status, None);
        let failed = outcome.failed();
        assert_eq!(failed.len(), 3, "{failed:?}");
        assert!(failed[0].starts_with("datapath (no exit status"));
        assert!(failed[1].starts_with("restart (no exit status"));
        assert!(failed[2].starts_with("modprobe cls_bpf"));
    }

    #[test]
    fn tcx_is_declared_absent_before_6_6() {
        assert_eq!(absent_features("6.1.0-57-amd64"), ["wire-timing", "tcx"]);
        assert_eq!(absent_features("6.5.13"), ["wire-timing", "tcx"]);
        assert_eq!(absent_features("6.6.0"), ["wire-timing"]);
        assert_eq!(absent_features("6.12.95+deb12-amd64"), ["wire-timing"]);
    }

    #[test]
    fn guest_only_suites_run_their_ignored_tests() {
        let suites = vec![GuestSuite {
            name: "hwtstamp".into(),
            executable: PathBuf::from("/t/integration-1"),
            tests: vec!["hwtstamp::a".into()],
        }];
        let script = init_script(&suites, Path::new("/w/network-probe"), &[], &[]);
        assert!(script.contains("--test-threads=1 --include-ignored  --exact 'hwtstamp::a'"));
        let script = init_script(&tests(), Path::new("/w/network-probe"), &[], &[]);
        assert!(!script.contains("--include-ignored"));
    }

    #[test]
    fn init_runs_every_test_with_its_marker_and_quoted_arguments() {
        let script = init_script(
            &tests(),
            Path::new("/w/network-probe"),
            &["it's".into()],
            &["tcx"],
        );
        assert!(script.contains("NETWORK_PROBE_TEST_NOT_APPLICABLE='tcx' RUST_BACKTRACE=1"));
        assert!(script.contains("modprobe cls_bpf"));
        assert!(script.contains(
            "'/t/integration-1' --test-threads=1 'it'\\''s' --exact 'datapath::a' 'datapath::b' 2>&1"
        ));
        assert!(script.contains("@@EXIT restart $status"));
        assert!(script.ends_with("poweroff -f\n"));
    }
}
