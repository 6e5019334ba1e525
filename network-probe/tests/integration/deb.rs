//! The Debian package, built, inspected, installed, run and purged on this machine.
//!
//! The package is built by cargo-deb (`[package.metadata.deb]` in network-probe/Cargo.toml, the
//! same configuration `cargo xtask deb` uses) from the daemon binary cargo built for this test
//! run: a cargo test cannot run `cargo build --release` itself (the outer `cargo test` holds the
//! build directory lock), so the test copies that binary to `<tmp>/release/network-probe` and
//! runs `cargo-deb --no-build` with `CARGO_TARGET_DIR=<tmp>`. Everything but the optimisation
//! level is what `cargo xtask deb` ships. cargo-deb is bootstrapped by `cargo xtask test`
//! into `~/.cache/network-probe/cargo-deb/`.
//!
//! The test installs the package with `dpkg -i` on this (disposable) machine, so it purges any
//! installed network-probe package first and again at the end, even on failure. systemd is not
//! PID 1 here, so the service is not started by systemd: the test checks the unit with
//! `systemd-analyze verify` and runs the installed binary the way the unit would (as the
//! `network-probe` user, with the unit's four capabilities, with the flags of
//! `/etc/default/network-probe`) inside a test namespace.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use network_probe_testkit::{Bpffs, VethPair, daemon_path, http, isolation};

const PACKAGE: &str = "network-probe";
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The configuration file the package installs and the unit passes with `--config.file`.
const CONFIG_FILE: &str = "/etc/network-probe/network-probe.yml";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives in the workspace")
        .to_path_buf()
}

fn cargo_deb() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .expect("HOME is set");
    let binary = cache.join("network-probe/cargo-deb/bin/cargo-deb");
    assert!(
        binary.is_file(),
        "{} is missing: `cargo xtask bootstrap --test-peers` (or `cargo xtask deb`) installs it",
        binary.display()
    );
    binary
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("starting {program}: {err}"))
}

/// Runs a command, asserts exit 0 and returns stdout and stderr together.
fn ok(program: &str, args: &[&str]) -> String {
    let output = run(program, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{program} {args:?} failed with {}: {text}",
        output.status
    );
    text
}

fn package_installed() -> bool {
    let output = run("dpkg-query", &["-W", "-f", "${db:Status-Status}", PACKAGE]);
    output.status.success() && String::from_utf8_lossy(&output.stdout).trim() != "not-installed"
}

fn user_exists(name: &str) -> bool {
    run("getent", &["passwd", name]).status.success()
}

fn group_exists(name: &str) -> bool {
    run("getent", &["group", name]).status.success()
}

/// Purges the package (if installed) on creation and on drop, and removes the scratch dir.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        purge();
        let dir = std::env::temp_dir().join(format!("network-probe-deb-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("release")).expect("creating the scratch dir");
        Scratch { dir }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        purge();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn purge() {
    if package_installed() {
        let output = run("dpkg", &["--purge", PACKAGE]);
        if !output.status.success() {
            eprintln!(
                "dpkg --purge {PACKAGE}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// Builds the package from the test's daemon binary; returns the .deb path.
fn build_package(scratch: &Scratch) -> PathBuf {
    fs::copy(daemon_path(), scratch.dir.join("release/network-probe")).expect("copying the daemon");
    // The manual page as `cargo xtask man` writes it: the same generator, gzipped the same way.
    let page = scratch.dir.join("release/network-probe.8");
    fs::write(&page, network_probe::cli::man::man_page()).expect("writing the manual page");
    ok("gzip", &["-9nkf", page.to_str().expect("a UTF-8 path")]);
    let output = Command::new(cargo_deb())
        .current_dir(workspace_root())
        .args(["--no-build", "--package", PACKAGE, "--fast"])
        .env("CARGO_TARGET_DIR", &scratch.dir)
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .expect("starting cargo-deb");
    assert!(
        output.status.success(),
        "cargo-deb failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let deb = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    assert_eq!(
        deb,
        scratch
            .dir
            .join(format!("debian/{PACKAGE}_{VERSION}-1_amd64.deb")),
        "cargo-deb's output path"
    );
    deb
}

/// The `ARGS` value of the default file, split into words as systemd splits an unquoted `$ARGS`.
fn default_args(default_file: &str) -> Vec<String> {
    let line = default_file
        .lines()
        .find_map(|line| line.strip_prefix("ARGS="))
        .expect("an ARGS= line");
    line.trim_matches('"')
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The installed binary started as the unit would start it, in the namespace `ns`.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn package_installs_runs_as_its_user_and_purges_cleanly() {
    // dpkg installs and purges the package host-wide (binary, /etc, unit links, the
    // network-probe user): no other test runs meanwhile (see network_probe_testkit::isolation).
    let _alone = isolation::exclusive();
    let root = workspace_root();
    let scratch = Scratch::new();
    let deb = build_package(&scratch);
    let deb = deb.to_str().expect("a UTF-8 path");

    // What the package declares and holds.
    let info = ok("dpkg-deb", &["--info", deb]);
    assert!(info.contains(&format!("Package: {PACKAGE}\n")), "{info}");
    assert!(info.contains(&format!("Version: {VERSION}-1\n")), "{info}");
    let depends = info
        .lines()
        .find_map(|line| line.trim().strip_prefix("Depends: "))
        .unwrap_or_else(|| panic!("no Depends: {info}"));
    assert!(depends.contains("adduser"), "{depends}");
    assert!(
        depends.contains("libc6 (>="),
        "computed by dpkg-shlibdeps: {depends}"
    );
    for script in ["postinst", "prerm", "postrm", "conffiles"] {
        assert!(info.contains(&format!(" {script} ")), "no {script}: {info}");
    }
    let conffiles = ok("dpkg-deb", &["--info", deb, "conffiles"]);
    assert_eq!(
        conffiles.trim(),
        "/etc/default/network-probe\n/etc/network-probe/network-probe.yml"
    );
    let contents = ok("dpkg-deb", &["--contents", deb]);
    for (path, mode) in [
        ("./usr/bin/network-probe", "-rwxr-xr-x"),
        (
            "./usr/lib/systemd/system/network-probe.service",
            "-rw-r--r--",
        ),
        ("./etc/default/network-probe", "-rw-r--r--"),
        ("./etc/network-probe/network-probe.yml", "-rw-r--r--"),
        (
            "./usr/share/doc/network-probe/configuration.md",
            "-rw-r--r--",
        ),
        ("./usr/share/doc/network-probe/README.md", "-rw-r--r--"),
        ("./usr/share/man/man8/network-probe.8.gz", "-rw-r--r--"),
        ("./usr/share/doc/network-probe/copyright", "-rw-r--r--"),
        (
            "./usr/share/doc/network-probe/examples/prometheus-alerts.yml",
            "-rw-r--r--",
        ),
    ] {
        assert!(
            contents
                .lines()
                .any(|line| line.starts_with(mode) && line.ends_with(path)),
            "{path} ({mode}) missing from:\n{contents}"
        );
    }

    // Install.
    ok("dpkg", &["--install", deb]);
    let version = ok("/usr/bin/network-probe", &["--version"]);
    assert_eq!(version.trim(), format!("network-probe {VERSION}"));
    let passwd = ok("getent", &["passwd", "network-probe"]);
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    let uid: u32 = fields[2].parse().expect("a uid");
    assert!(uid < 1000, "a system uid: {passwd}");
    assert_eq!(fields[5], "/nonexistent", "{passwd}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{passwd}");
    assert!(group_exists("network-probe"));
    // The unit and the default file are the repository's, byte for byte; /lib is /usr/lib on
    // Debian 12 (merged /usr), so systemd finds the unit under both.
    let unit_source = fs::read_to_string(root.join("systemd/network-probe.service")).unwrap();
    assert_eq!(
        fs::read_to_string("/lib/systemd/system/network-probe.service").unwrap(),
        unit_source
    );
    let default_file = fs::read_to_string("/etc/default/network-probe").unwrap();
    assert_eq!(
        default_file,
        fs::read_to_string(root.join("packaging/default/network-probe")).unwrap()
    );
    assert!(unit_source.contains("User=network-probe\n"));
    assert!(unit_source.contains("EnvironmentFile=-/etc/default/network-probe\n"));
    assert_eq!(
        fs::read_to_string("/etc/network-probe/network-probe.yml").unwrap(),
        fs::read_to_string(root.join("packaging/config/network-probe.yml")).unwrap()
    );
    assert!(unit_source.contains(&format!(
        "ExecStart=/usr/bin/network-probe --config.file={CONFIG_FILE} $ARGS\n"
    )));
    assert!(unit_source.contains("ExecReload=/bin/kill -HUP $MAINPID\n"));
    // Enabled (deb-systemd-helper works without a running systemd).
    assert_eq!(
        fs::read_link("/etc/systemd/system/multi-user.target.wants/network-probe.service")
            .expect("the unit is enabled"),
        Path::new("/lib/systemd/system/network-probe.service")
    );
    // systemd-analyze verify loads the unit as systemd would (it also checks that ExecStart's
    // binary exists); it fails on unknown settings or a bad command line.
    let verify = run(
        "systemd-analyze",
        &["verify", "/lib/systemd/system/network-probe.service"],
    );
    let verify_text = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{verify_text}");
    assert!(
        !verify_text.contains("network-probe.service"),
        "warnings about the unit: {verify_text}"
    );

    manual_page_installed(&unit_source);

    // Run it as the unit would: as network-probe, with exactly the unit's capabilities (ambient),
    // and the default file's flags, on a test namespace's interface.
    let pair = VethPair::new();
    let mut args = vec![format!("--config.file={CONFIG_FILE}")];
    let default_flags = default_args(&default_file);
    assert_eq!(default_flags, ["--web.listen-address=:9435"]);
    args.extend(default_flags);
    args.extend(["--interface".to_string(), pair.a_if.clone()]);
    // The unit's ExecStartPre, on a private bpffs instead of the host's /sys/fs/bpf: a pin
    // directory owned by the service user, the only place it may write.
    let unit = fs::read_to_string("/lib/systemd/system/network-probe.service").unwrap();
    let pre = unit
        .lines()
        .find_map(|line| line.strip_prefix("ExecStartPre=+"))
        .expect("the unit creates the pin directory");
    let bpffs = Bpffs::new();
    let pin_path = bpffs.pin_path();
    let pre: Vec<&str> = pre
        .split_whitespace()
        .map(|word| {
            if word == "/sys/fs/bpf/network-probe" {
                pin_path.to_str().unwrap()
            } else {
                word
            }
        })
        .collect();
    ok(pre[0], &pre[1..]);
    // And its StateDirectory=network-probe.
    assert!(unit.contains("\nStateDirectory=network-probe\n"));
    ok(
        "install",
        &[
            "-d",
            "-o",
            PACKAGE,
            "-g",
            PACKAGE,
            "-m",
            "0700",
            "/var/lib/network-probe",
        ],
    );
    args.push(format!("--datapath.pin-path={}", pin_path.display()));
    let caps = "+bpf,+perfmon,+net_admin,+net_raw";
    let child = Command::new("ip")
        .args(["netns", "exec", &pair.a, "setpriv"])
        .args([
            "--reuid=network-probe",
            "--regid=network-probe",
            "--init-groups",
            &format!("--bounding-set=-all,{caps}"),
            &format!("--inh-caps=-all,{caps}"),
            &format!("--ambient-caps=-all,{caps}"),
            "--no-new-privs",
            "/usr/bin/network-probe",
        ])
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the installed daemon");
    let mut service = Service(child);
    let listen = "127.0.0.1:9435".parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((200, _)) = http(&pair.a, listen, "GET", "/-/ready") {
            break;
        }
        if let Some(status) = service.0.try_wait().unwrap() {
            panic!("the installed daemon exited during start-up: {status}");
        }
        assert!(Instant::now() < deadline, "not ready after 20 s");
        thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = http(&pair.a, listen, "GET", "/metrics").expect("scrape");
    assert_eq!(status, 200);
    assert!(
        body.contains(&format!(
            "network_probe_datapath_programs_attached{{interface=\"{}\",program=\"tc_ingress\"}} 1",
            pair.a_if
        )),
        "{body}"
    );
    // Pinned by the service user: a restart would carry on from these counters.
    assert!(
        body.contains("network_probe_datapath_map_origin{map=\"FLOWS4\",origin=\"created\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("network_probe_datapath_state_save_errors_total 0\n"),
        "{body}"
    );
    let layout = format!("maps-v{}", network_probe_common::MAP_LAYOUT_VERSION);
    assert!(pin_path.join(layout).join("FLOWS4").exists());
    let status_file = fs::read_to_string(format!("/proc/{}/status", service.0.id())).unwrap();
    let ids = |key: &str| {
        status_file
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .unwrap()
            .split_whitespace()
            .map(|id| id.parse::<u32>().unwrap())
            .collect::<Vec<_>>()
    };
    // `ip netns exec` execs setpriv, which execs the daemon: the child is the daemon.
    assert_eq!(ids("Uid:"), [uid; 4], "{status_file}");
    // The installed configuration is in force (its modules, read by the service user) and
    // reloads as `systemctl reload` would have it (SIGHUP).
    let (status, shown) = http(&pair.a, listen, "GET", "/config").expect("/config");
    assert_eq!(status, 200);
    assert!(shown.contains("  icmp_v4:\n    prober: ping\n"), "{shown}");
    // SAFETY: signalling our own child.
    assert_eq!(
        unsafe { libc::kill(service.0.id() as i32, libc::SIGHUP) },
        0
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = http(&pair.a, listen, "GET", "/metrics").expect("scrape");
        if body.contains("network_probe_config_reloads_total{result=\"success\"} 1") {
            break;
        }
        assert!(Instant::now() < deadline, "no successful reload: {body}");
        thread::sleep(Duration::from_millis(50));
    }
    drop(service);
    drop(pair);

    // Re-installing the same version (an upgrade in dpkg's terms) keeps the user.
    ok("dpkg", &["--install", deb]);
    assert_eq!(ok("getent", &["passwd", "network-probe"]), passwd);

    // Remove: the binary and the unit go, the user and the conffile stay (until purge).
    ok("dpkg", &["--remove", PACKAGE]);
    assert!(!Path::new("/usr/bin/network-probe").exists());
    assert!(!Path::new("/lib/systemd/system/network-probe.service").exists());
    assert!(Path::new("/etc/default/network-probe").exists());
    assert!(Path::new(CONFIG_FILE).exists());
    assert!(user_exists("network-probe"));

    // Purge: the conffile, the enablement symlink, the user and the group go.
    ok("dpkg", &["--purge", PACKAGE]);
    assert!(!package_installed());
    assert!(!Path::new("/etc/default/network-probe").exists());
    assert!(!Path::new(CONFIG_FILE).exists());
    assert!(
        fs::symlink_metadata("/etc/systemd/system/multi-user.target.wants/network-probe.service")
            .is_err()
    );
    assert!(!user_exists("network-probe"));
    assert!(
        !Path::new("/var/lib/network-probe").exists(),
        "purge removes the state"
    );
    assert!(!group_exists("network-probe"));
}

/// The unit's Documentation= names the installed manual page and README; `man` finds the page
/// by name, renders it without warnings, and it lists every flag clap knows (of the daemon and
/// of each subcommand) and the subcommands themselves.
fn manual_page_installed(unit: &str) {
    let documentation = unit
        .lines()
        .find_map(|line| line.strip_prefix("Documentation="))
        .expect("a Documentation= line");
    assert_eq!(
        documentation,
        "man:network-probe(8) file:///usr/share/doc/network-probe/README.md"
    );
    assert!(Path::new("/usr/share/doc/network-probe/README.md").is_file());
    let found = Command::new("man")
        .args(["-w", "8", "network-probe"])
        .output()
        .expect("starting man: `cargo xtask bootstrap --test-peers` installs man-db");
    assert!(found.status.success(), "man -w 8 network-probe: {found:?}");
    assert_eq!(
        String::from_utf8_lossy(&found.stdout).trim(),
        "/usr/share/man/man8/network-probe.8.gz"
    );
    // Wide lines: no flag is hyphenated across a line break. groff's warnings (-ww) go to
    // stderr, which must stay empty.
    let rendered = Command::new("man")
        .args(["-l", "/usr/share/man/man8/network-probe.8.gz"])
        .env("MANWIDTH", "250")
        .env("MANPAGER", "cat")
        .env("MANROFFOPT", "-ww")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .expect("starting man");
    let stderr = String::from_utf8_lossy(&rendered.stderr);
    assert!(
        rendered.status.success() && stderr.is_empty(),
        "man -l: {stderr}"
    );
    let text = String::from_utf8_lossy(&rendered.stdout);
    for heading in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "COMMAND CHECK",
        "COMMAND PROBE",
        "FILES",
        "SEE ALSO",
    ] {
        assert!(
            text.lines().any(|line| line == heading),
            "no {heading} section:\n{text}"
        );
    }
    assert!(text.starts_with("network-probe(8)"), "{text}");
    let command = <network_probe::cli::Cli as clap::CommandFactory>::command();
    let mut flags = 0;
    for command in std::iter::once(&command).chain(command.get_subcommands()) {
        for arg in command.get_arguments() {
            if let Some(long) = arg.get_long() {
                // An OPTIONS entry starts with the flag, indented.
                let entry = format!("--{long}");
                assert!(
                    text.lines()
                        .any(|line| line.trim_start().starts_with(&entry)
                            && line.trim_start()[entry.len()..].starts_with([' ', ',', '\n'])
                            || line.trim_start() == entry),
                    "{entry} has no entry in the rendered page:\n{text}"
                );
                flags += 1;
            }
        }
    }
    assert!(flags > 30, "only {flags} flags");
}
