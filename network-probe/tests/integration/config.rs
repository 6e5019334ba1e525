//! `--config.file` with the real daemon in a namespace: modules of the file used through
//! `/probe?module=` against real peers (tftpd-hpa serving files whose size and SHA-256 the test
//! computes from disk; the peer namespace answering ping), request parameters overriding module
//! options, unknown modules, `/config`, and reloading by SIGHUP and `POST /-/reload` (with
//! `--web.enable-lifecycle`), with good and bad files (the old configuration stays in force)
//! and the reload metrics, which promtool lints.

use std::{
    net::UdpSocket,
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use network_probe_testkit::{Daemon, VethPair, daemon_path, dotted, http, in_netns, sample};
use sha2::{Digest as _, Sha256};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A scratch directory under /tmp (readable by `nobody`, as tftpd-hpa needs), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
        let path = PathBuf::from(format!("/tmp/np-config-{}-{id}", std::process::id()));
        std::fs::create_dir_all(path.join("served")).unwrap();
        for dir in [path.clone(), path.join("served")] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Scratch(path)
    }

    /// Writes `size` pseudo-random bytes to served/`name`; returns the SHA-256 in hex, read
    /// back from disk.
    fn served_file(&self, name: &str, size: usize) -> String {
        let mut state = 0x2545_f491_4f6c_dd1du64 ^ size as u64;
        let content: Vec<u8> = (0..size)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let path = self.0.join("served").join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        Sha256::digest(std::fs::read(&path).unwrap())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// (Re)writes the configuration file; returns its path.
    fn config(&self, text: &str) -> String {
        let path = self.0.join("network-probe.yml");
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// tftpd-hpa (`in.tftpd -L`) on 127.0.0.1:6969 inside `ns`, serving `dir`; killed on drop.
struct Tftpd(Child);

impl Tftpd {
    fn start(ns: &str, dir: &std::path::Path) -> Tftpd {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "in.tftpd", "-L", "-s"])
            .arg(dir)
            .args(["-a", "127.0.0.1:6969"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting in.tftpd (apt-get install tftpd-hpa)");
        let server = Tftpd(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while in_netns(ns, || UdpSocket::bind("127.0.0.1:6969").is_ok()) {
            assert!(Instant::now() < deadline, "in.tftpd did not bind in {ns}");
            thread::sleep(Duration::from_millis(20));
        }
        server
    }
}

impl Drop for Tftpd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(daemon: &Daemon, path: &str) -> (u16, String) {
    daemon.get(path).expect("request")
}

fn post(daemon: &Daemon, path: &str) -> (u16, String) {
    http(&daemon.ns, daemon.listen, "POST", path).expect("request")
}

fn value(body: &str, name: &str, labels: &str) -> f64 {
    sample(body, name, labels).unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{body}"))
}

fn option(body: &str, option: &str) -> Option<f64> {
    sample(
        body,
        "tftp_probe_negotiated_option",
        &format!("option=\"{option}\""),
    )
}

/// The reload metrics of a scrape: (last successful, success timestamp, successes, failures).
fn reload_metrics(daemon: &Daemon) -> (f64, f64, f64, f64) {
    let scrape = daemon.scrape();
    (
        value(&scrape, "network_probe_config_last_reload_successful", ""),
        value(
            &scrape,
            "network_probe_config_last_reload_success_timestamp_seconds",
            "",
        ),
        value(
            &scrape,
            "network_probe_config_reloads_total",
            "result=\"success\"",
        ),
        value(
            &scrape,
            "network_probe_config_reloads_total",
            "result=\"failure\"",
        ),
    )
}

fn sighup(daemon: &Daemon) {
    // SAFETY: signalling our own child.
    assert_eq!(
        unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) },
        0
    );
}

/// Waits (at most 10 s) until the reload counters reach (successes, failures).
fn wait_for_reloads(daemon: &Daemon, successes: f64, failures: f64) -> (f64, f64, f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = reload_metrics(daemon);
        if (metrics.2, metrics.3) == (successes, failures) {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "reload counters {metrics:?}, expected {successes} successes and {failures} failures"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn file_modules_probe_tftpd_hpa_and_requests_override_their_options() {
    let pair = VethPair::new();
    let scratch = Scratch::new();
    let size = 100_003;
    let sha = scratch.served_file("data.bin", size);
    scratch.served_file("other.bin", 4_000);
    let _server = Tftpd::start(&pair.a, &scratch.0.join("served"));
    let config = scratch.config(&format!(
        "modules:\n  tftp_data:\n    prober: tftp\n    timeout: 20s\n    tftp:\n      \
         tftp_port: 6969\n      tftp_filename: data.bin\n      blksize: 1024\n      \
         tsize: true\n      expected_size: {size}\n      expected_sha256: {sha}\n"
    ));
    let daemon = Daemon::start(
        &pair.a,
        &["--interface", &pair.a_if, "--config.file", &config],
    );

    // The module's options: the file's size and hash match, the server's OACK echoes the
    // module's blksize and reports the size on disk as tsize.
    let (status, body) = get(&daemon, "/probe?module=tftp_data&target=127.0.0.1");
    assert_eq!(status, 200, "{body}");
    assert_eq!(value(&body, "tftp_probe_success", ""), 1.0, "{body}");
    assert_eq!(
        value(&body, "tftp_probe_content_length_bytes", ""),
        size as f64
    );
    assert_eq!(option(&body, "blksize"), Some(1024.0), "{body}");
    assert_eq!(option(&body, "tsize"), Some(size as f64), "{body}");

    // A request parameter overrides the module's option ...
    let (status, body) = get(
        &daemon,
        "/probe?module=tftp_data&target=127.0.0.1&blksize=512",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(value(&body, "tftp_probe_success", ""), 1.0, "{body}");
    assert_eq!(option(&body, "blksize"), Some(512.0), "{body}");
    // ... and the others still apply: another file no longer matches the module's size.
    let (status, body) = get(
        &daemon,
        "/probe?module=tftp_data&target=127.0.0.1&tftp_filename=other.bin",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(value(&body, "tftp_probe_success", ""), 0.0, "{body}");
    assert_eq!(value(&body, "tftp_probe_content_length_bytes", ""), 4000.0);
    // An empty parameter resets the option to the prober's default (no size expected).
    let (_, body) = get(
        &daemon,
        "/probe?module=tftp_data&target=127.0.0.1&tftp_filename=other.bin&expected_size=&expected_sha256=",
    );
    assert_eq!(value(&body, "tftp_probe_success", ""), 1.0, "{body}");

    // The built-in module still works without any option from the file.
    let (status, body) = get(
        &daemon,
        "/probe?module=tftp&target=127.0.0.1:6969&tftp_filename=data.bin",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(value(&body, "tftp_probe_success", ""), 1.0, "{body}");
    assert_eq!(option(&body, "blksize"), None, "{body}");

    // Bad override values are still the prober's 400s.
    let (status, body) = get(
        &daemon,
        "/probe?module=tftp_data&target=127.0.0.1&blksize=99999",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"99999\""), "{body}");

    // An unknown module: 400 naming it.
    let (status, body) = get(&daemon, "/probe?module=tftp_big&target=127.0.0.1");
    assert_eq!(status, 400, "{body}");
    assert!(
        body.starts_with("unknown module \"tftp_big\" (configured: iperf3, ping, tftp, tftp_data)"),
        "{body}"
    );

    // debug=true: the log, the metrics and the module.
    let (status, body) = get(
        &daemon,
        "/probe?module=tftp_data&target=127.0.0.1&debug=true",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("Logs for the probe:\n"), "{body}");
    assert!(body.contains("tftp_probe_success 1"), "{body}");
    let module = body
        .split("Module configuration (tftp_data):\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no module in {body}"));
    assert!(module.contains("prober: tftp\n"), "{module}");
    assert!(module.contains("blksize: 1024\n"), "{module}");

    // /config: the module, and the settings in force with their sources.
    let (status, shown) = get(&daemon, "/config");
    assert_eq!(status, 200);
    assert!(
        shown.contains("  tftp_data:\n    prober: tftp\n"),
        "{shown}"
    );
    assert!(
        shown.contains("# From flags: interfaces (--interface)"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("interfaces:\n- {}\n", pair.a_if)),
        "{shown}"
    );
    // The start-up load counts as successful; no reload yet.
    let (successful, _, successes, failures) = reload_metrics(&daemon);
    assert_eq!((successful, successes, failures), (1.0, 0.0, 0.0));
}

#[test]
fn reloads_apply_good_files_and_keep_the_old_configuration_on_bad_ones() {
    let pair = VethPair::new();
    let scratch = Scratch::new();
    let peer = dotted(pair.b_addr);
    let config =
        scratch.config("modules:\n  ping4:\n    prober: ping\n    ping:\n      ip_version: 4\n");
    let daemon = Daemon::start(
        &pair.a,
        &[
            "--interface",
            &pair.a_if,
            "--config.file",
            &config,
            "--ping.interval",
            "50ms",
            // POST /-/reload is served only with it.
            "--web.enable-lifecycle",
        ],
    );
    let (status, _) = get(&daemon, &format!("/probe?module=ping_peer&target={peer}"));
    assert_eq!(status, 400);
    let started = reload_metrics(&daemon);
    assert_eq!(started.0, 1.0);

    // A good file by POST /-/reload: the new module appears; the flow setting needs a restart.
    scratch.config(
        "modules:\n  ping4:\n    prober: ping\n    ping:\n      ip_version: 4\n  \
         ping_peer:\n    prober: ping\n    timeout: 5s\n    ping:\n      ip_version: 4\n\
         flows:\n  max_series: 7\n",
    );
    let before = now_seconds();
    let (status, body) = post(&daemon, "/-/reload");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("configuration reloaded\n"), "{body}");
    assert!(
        body.contains("needs restart: flows.max_series: (default) -> 7 needs a restart"),
        "{body}"
    );
    let (successful, timestamp, successes, failures) = reload_metrics(&daemon);
    assert_eq!((successful, successes, failures), (1.0, 1.0, 0.0));
    assert!(timestamp >= before - 1.0 && timestamp <= now_seconds() + 1.0);
    let (_, shown) = get(&daemon, "/config");
    assert!(
        shown.contains("  ping_peer:\n    prober: ping\n"),
        "{shown}"
    );
    // The real peer answers: the module works.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = get(&daemon, &format!("/probe?module=ping_peer&target={peer}"));
        assert_eq!(status, 200, "{body}");
        let received = sample(
            &body,
            "icmp_probe_packets_recv_total",
            &format!("ip=\"{peer}\""),
        );
        if received.unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no reply from {peer}: {body}");
        thread::sleep(Duration::from_millis(100));
    }

    // A syntax error: 409 naming it; the old configuration stays in force.
    scratch.config("modules:\n  broken: [\n");
    let (status, body) = post(&daemon, "/-/reload");
    assert_eq!(status, 409, "{body}");
    assert!(
        body.starts_with(
            "reload failed, the previous configuration stays in force: not valid YAML: "
        ),
        "{body}"
    );
    let (successful, kept_timestamp, successes, failures) = reload_metrics(&daemon);
    assert_eq!((successful, successes, failures), (0.0, 1.0, 1.0));
    assert_eq!(kept_timestamp, timestamp);
    let (status, _) = get(&daemon, &format!("/probe?module=ping_peer&target={peer}"));
    assert_eq!(status, 200);

    // A bad value by SIGHUP: counted as a failure; POST names the field and the value.
    scratch.config("modules:\n  tftp_big:\n    prober: tftp\n    tftp:\n      blksize: 99999\n");
    sighup(&daemon);
    let (successful, _, _, _) = wait_for_reloads(&daemon, 1.0, 2.0);
    assert_eq!(successful, 0.0);
    let (status, body) = post(&daemon, "/-/reload");
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("modules.tftp_big.tftp.blksize: parameter \"blksize\": \"99999\""),
        "{body}"
    );
    let (_, shown) = get(&daemon, "/config");
    assert!(shown.contains("ping_peer:"), "{shown}");
    assert!(!shown.contains("tftp_big"), "{shown}");

    // A good file by SIGHUP: in force, and the metrics say so.
    scratch.config(
        "modules:\n  tftp_big:\n    prober: tftp\n    tftp:\n      blksize: 1468\n\
         flows:\n  max_series: 7\nprobe:\n  allow: [192.0.2.0/24]\n",
    );
    sighup(&daemon);
    let (successful, _, _, _) = wait_for_reloads(&daemon, 2.0, 3.0);
    assert_eq!(successful, 1.0);
    let (_, shown) = get(&daemon, "/config");
    assert!(shown.contains("  tftp_big:\n"), "{shown}");
    assert!(!shown.contains("ping_peer:"), "{shown}");
    let (status, body) = get(&daemon, &format!("/probe?module=ping_peer&target={peer}"));
    assert_eq!(status, 400, "{body}");
    // The reloaded allowlist applies at once; the flow setting waits for a restart.
    let (status, body) = get(&daemon, &format!("/probe?module=tftp_big&target={peer}"));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(&format!("\"{peer}\"")), "{body}");
    assert!(
        shown.contains("# Not in force: flows.max_series: (default) -> 7 needs a restart"),
        "{shown}"
    );
    assert!(shown.contains("max_series: '500'"), "{shown}");

    // GET is not a reload.
    let (status, _) = get(&daemon, "/-/reload");
    assert_eq!(status, 405);

    // promtool lints the reload metrics.
    let scrape = daemon.scrape();
    let ours: String = scrape
        .lines()
        .filter(|line| line.contains("network_probe_config_"))
        .map(|line| format!("{line}\n"))
        .collect();
    let (clean, said) = network_probe_testkit::promtool_check_metrics(&ours);
    assert!(
        clean && said.is_empty(),
        "promtool on\n{ours}\nsaid: {said}"
    );
    assert_eq!(ours.matches("# HELP").count(), 3, "{ours}");
}

#[test]
fn without_a_file_builtin_modules_work_and_reload_is_refused() {
    let pair = VethPair::new();
    let daemon = Daemon::start(
        &pair.a,
        &["--interface", &pair.a_if, "--web.enable-lifecycle"],
    );
    let (status, body) = post(&daemon, "/-/reload");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("no --config.file"), "{body}");
    let (status, body) = get(
        &daemon,
        &format!("/probe?module=ping&target={}", dotted(pair.b_addr)),
    );
    assert_eq!(status, 200, "{body}");
    let (status, shown) = get(&daemon, "/config");
    assert_eq!(status, 200);
    assert!(
        shown.contains("modules:\n  iperf3:\n    prober: iperf3\n"),
        "{shown}"
    );
}

#[test]
fn a_bad_file_at_start_exits_2_naming_the_field() {
    let scratch = Scratch::new();
    let config = scratch.config("flows:\n  idle_timeout: 5\n");
    // The file is read before anything else: no namespace or privilege needed to see this.
    let output = Command::new(daemon_path())
        .args(["--config.file", &config])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.trim(),
        format!(
            "network-probe: error: invalid --config.file {config:?}: flows.idle_timeout: 5 is \
             not accepted: invalid value '5' for '--flows.idle-timeout <DURATION>': \"5\" needs \
             a unit: ms, s, m or h"
        )
    );
    let output = Command::new(daemon_path())
        .args(["--config.file", "/nonexistent/np.yml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot read \"/nonexistent/np.yml\""),
    );
}
