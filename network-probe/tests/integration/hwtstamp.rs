//! `--ping.hard` end to end on a NIC that stamps packets in hardware: the simulated pair of
//! testing/hwtstamp-veth (`hwts0` in namespace `a`, where the daemon runs; `hwts1` in `b`,
//! whose kernel answers). Its clock is CLOCK_REALTIME plus an hour and every receive stamp
//! carries a configured one-way delay, so the round trips the daemon reports show which
//! stamps it used: from hardware stamps, the delay plus the peer kernel's turnaround; from
//! software stamps, no delay; from a mix of the two clocks, an hour (lost).
//!
//! The module only exists in the qemu guest of `cargo xtask kernel-test` (built against the
//! guest kernel's headers by the xtask bootstrap), so these tests are ignored on the host and
//! the guest runs this suite with `--include-ignored`.

use std::{
    process::Command,
    sync::{Mutex, MutexGuard, PoisonError},
    thread,
    time::{Duration, Instant},
};

use network_probe::probe::ping::timestamps::{self, HardwareConfig};
use network_probe_testkit::{Bpffs, Daemon, daemon_path, in_netns, isolation, sample, sh};

const MODULE: &str = "hwtstamp_veth";
/// Replies measured without hardware stamps on sockets set up for them.
const MISSING: &str = "network_probe_ping_hardware_timestamp_missing_total";
/// The one warning about hardware stamps missing after setup.
const MISSING_WARNING: &str = "ping: hardware timestamps missing on hwts0";
const A_IF: &str = "hwts0";
const B_IF: &str = "hwts1";
const A4: &str = "10.232.0.1";
const B4: &str = "10.232.0.2";
const A6: &str = "fd00:232::1";
const B6: &str = "fd00:232::2";
/// The module's initial configuration: transmit stamps off, receive filter none.
const UNSTAMPED: HardwareConfig = HardwareConfig {
    flags: 0,
    tx_type: 0,
    rx_filter: 0,
};

/// The simulated pair, loaded with the given module parameters, its ends in two fresh
/// namespaces with IPv4 and IPv6 addresses and static neighbours. Dropping it deletes the
/// namespaces and unloads the module.
struct SimulatedNic {
    a: String,
    b: String,
    _serial: MutexGuard<'static, ()>,
    _isolation: isolation::Shared,
}

impl SimulatedNic {
    fn load(parameters: &[String]) -> SimulatedNic {
        // One pair per machine: the tests using it take turns.
        static PAIR: Mutex<()> = Mutex::new(());
        let serial = PAIR.lock().unwrap_or_else(PoisonError::into_inner);
        let isolation = isolation::shared();
        let _ = Command::new("modprobe").args(["-r", MODULE]).status();
        let mut args = vec![MODULE];
        args.extend(parameters.iter().map(String::as_str));
        sh("modprobe", &args);
        let tag = std::process::id() % 100_000;
        let nic = SimulatedNic {
            a: format!("np-hwts-{tag}-a"),
            b: format!("np-hwts-{tag}-b"),
            _serial: serial,
            _isolation: isolation,
        };
        for ns in [&nic.a, &nic.b] {
            sh("ip", &["netns", "add", ns]);
            nic.exec(ns, "ip", &["link", "set", "lo", "up"]);
        }
        nic.configure();
        nic
    }

    /// Deletes the pair (unloading the module) and creates it again (loading it with
    /// `parameters`), configured as [`SimulatedNic::load`] does: same names, addresses and
    /// neighbours, new interface indexes and the driver's initial stamping configuration.
    fn reload(&self, parameters: &[String]) {
        sh("modprobe", &["-r", MODULE]);
        let mut args = vec![MODULE];
        args.extend(parameters.iter().map(String::as_str));
        sh("modprobe", &args);
        self.configure();
    }

    /// Moves the freshly created ends into their namespaces and configures them.
    fn configure(&self) {
        let nic = self;
        for (ns, ifname, v4, v6) in [(&nic.a, A_IF, A4, A6), (&nic.b, B_IF, B4, B6)] {
            sh("ip", &["link", "set", ifname, "netns", ns]);
            nic.exec(
                ns,
                "ip",
                &["addr", "add", &format!("{v4}/24"), "dev", ifname],
            );
            nic.exec(
                ns,
                "ip",
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{v6}/64"),
                    "dev",
                    ifname,
                    "nodad",
                ],
            );
            nic.exec(ns, "ip", &["link", "set", ifname, "up"]);
        }
        nic.neighbours();
    }

    /// Static neighbours: no ARP or neighbour discovery crosses the pair unasked. (Setting a
    /// device down flushes its permanent entries too: set again after.)
    fn neighbours(&self) {
        for (ns, ifname, peer_ns, peer_if, peer4, peer6) in [
            (&self.a, A_IF, &self.b, B_IF, B4, B6),
            (&self.b, B_IF, &self.a, A_IF, A4, A6),
        ] {
            let mac = self
                .exec(
                    peer_ns,
                    "cat",
                    &[&format!("/sys/class/net/{peer_if}/address")],
                )
                .trim()
                .to_string();
            for peer in [peer4, peer6] {
                self.exec(
                    ns,
                    "ip",
                    &[
                        "neigh",
                        "replace",
                        peer,
                        "lladdr",
                        &mac,
                        "nud",
                        "permanent",
                        "dev",
                        ifname,
                    ],
                );
            }
        }
    }

    fn exec(&self, ns: &str, program: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", ns, program];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// `hwts0`'s configuration as SIOCGHWTSTAMP reports it.
    fn config(&self) -> HardwareConfig {
        in_netns(&self.a, || timestamps::hardware_config(A_IF)).expect("SIOCGHWTSTAMP on hwts0")
    }

    /// The daemon in `a` with `--ping.hard` and `extra`, its stderr appended to `log`.
    fn daemon(&self, log: &str, extra: &[&str]) -> Daemon {
        let mut args = vec![
            "--interface",
            A_IF,
            "--ping.hard",
            "--ping.interval",
            "50ms",
            "--ping.timeout",
            "1s",
            "--ping.samples",
            "100000",
        ];
        args.extend_from_slice(extra);
        let _ = std::fs::remove_file(log);
        Daemon::start_wrapped(&self.a, &["sh", "-c", "exec \"$@\" 2>>\"$0\"", log], &args)
    }
}

impl Drop for SimulatedNic {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        // The devices go back to the initial namespace with their namespaces, and unloading
        // the module removes them wherever they are.
        let _ = Command::new("modprobe").args(["-r", MODULE]).status();
    }
}

/// GET /probe?module=ping&QUERY from `daemon`, asserting 200.
fn probe(daemon: &Daemon, query: &str) -> String {
    let (status, body) = daemon
        .get(&format!("/probe?module=ping&{query}"))
        .expect("probe request");
    assert_eq!(status, 200, "{body}");
    body
}

fn value(body: &str, name: &str, labels: &str) -> f64 {
    sample(body, name, labels).unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{body}"))
}

/// Probes `query` until every (metric prefix, labels) of `targets` has at least `wanted`
/// replies (at most 60 s: the guest is emulated), then returns the debug body (probe log).
fn gather(daemon: &Daemon, query: &str, targets: &[(&str, String)], wanted: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = probe(daemon, &format!("{query}&debug=true"));
        let done = targets.iter().all(|(prefix, labels)| {
            sample(&body, &format!("{prefix}_probe_packets_recv_total"), labels)
                .is_some_and(|received| received >= wanted)
        });
        if done {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {wanted} replies after 60 s:\n{body}"
        );
        thread::sleep(Duration::from_millis(500));
    }
}

/// Kernel and user-clock RTTs (µs) of every reply in the window of the probe log line that
/// starts with `key` (`10.232.0.2:` or `10.232.0.2 port 9:`); kernel RTTs measured with the
/// user clock (suffix `u`) are kept as NaN so a test can count them.
fn window(debug_body: &str, key: &str) -> Vec<(f64, f64)> {
    let line = debug_body
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no log line for {key} in\n{debug_body}"));
    let field = |name: &str| -> Vec<f64> {
        line.split(&format!("| {name}:"))
            .nth(1)
            .unwrap()
            .split('|')
            .next()
            .unwrap()
            .split_whitespace()
            .filter(|value| *value != "lost")
            .map(|value| value.parse().unwrap_or(f64::NAN))
            .collect()
    };
    let (kernel, user) = (field("rtt_us"), field("user_rtt_us"));
    assert_eq!(kernel.len(), user.len(), "{line}");
    kernel.into_iter().zip(user).collect()
}

fn percentile(values: &[f64], at: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * at).round() as usize]
}

/// ICMP over IPv4 and IPv6 and TCP SYN: every round trip is the simulated delay plus the peer
/// kernel's turnaround, measured from the hardware stamps on both ends (no user-clock sample),
/// and the module's configuration is put back when the daemon exits.
#[test]
#[ignore = "needs the hwtstamp_veth module of the qemu guest (cargo xtask kernel-test)"]
fn hardware_stamps_measure_the_simulated_delay() {
    const DELAY_US: f64 = 5_000.0;
    let nic = SimulatedNic::load(&[format!("delay_ns={}", DELAY_US as u64 * 1000)]);
    assert_eq!(nic.config(), UNSTAMPED);
    let log = "/tmp/hwtstamp-delay.log";
    let mut daemon = nic.daemon(log, &[]);
    let icmp = format!("target={B4}&target={B6}");
    let tcp = format!("target={B4}&target={B6}&tcp_port=9");
    probe(&daemon, &icmp);
    probe(&daemon, &tcp);
    // SIOCSHWTSTAMP took: transmit stamps on, every packet stamped on receive.
    assert_eq!(nic.config(), HardwareConfig::STAMP_ALL);
    let cases = [
        (
            icmp.as_str(),
            "icmp",
            format!("ip=\"{B4}\""),
            B4.to_string(),
        ),
        (
            icmp.as_str(),
            "icmp",
            format!("ip=\"{B6}\""),
            B6.to_string(),
        ),
        (
            tcp.as_str(),
            "tcp",
            format!("ip=\"{B4}\",port=\"9\""),
            format!("{B4} port 9"),
        ),
        (
            tcp.as_str(),
            "tcp",
            format!("ip=\"{B6}\",port=\"9\""),
            format!("{B6} port 9"),
        ),
    ];
    for (query, prefix, labels, key) in &cases {
        let body = gather(&daemon, query, &[(prefix, labels.clone())], 20.0);
        let received = value(&body, &format!("{prefix}_probe_packets_recv_total"), labels);
        let sent = value(&body, &format!("{prefix}_probe_packets_sent_total"), labels);
        assert!(
            sent - received <= 1.0,
            "{key}: sent {sent}, received {received}"
        );
        // Hardware stamps on both ends of every reply, the first one included.
        assert_eq!(
            value(
                &body,
                &format!("{prefix}_probe_user_clock_samples_total"),
                labels
            ),
            0.0,
            "{key}"
        );
        assert_eq!(
            value(
                &body,
                "network_probe_ping_hardware_timestamp_fallbacks_total",
                ""
            ),
            0.0
        );
        assert_eq!(value(&body, MISSING, ""), 0.0, "{key}");
        let samples = window(&body, key);
        assert!(samples.len() >= 20, "{key}: {samples:?}");
        // Each round trip is the delay (in the receive stamp only) plus the peer's turnaround:
        // the request's transmit stamp to the reply's, both taken by the pair's clock. That
        // turnaround is real time spent between our send call and our receive call, so the
        // user clock's round trip bounds it; the log rounds to 0.1 µs.
        let mut excess = Vec::new();
        for (rtt, user_rtt) in &samples {
            let over = rtt - DELAY_US;
            assert!(
                over >= -0.1 && over <= user_rtt + 0.1,
                "{key}: RTT {rtt} µs with a {DELAY_US} µs delay and a user-clock RTT of \
                 {user_rtt} µs: {samples:?}"
            );
            excess.push(over);
        }
        // The sums agree with the window: mean RTT = delay + mean turnaround.
        let sum = value(
            &body,
            &format!("{prefix}_probe_latency_seconds_total"),
            labels,
        );
        let user_sum = value(
            &body,
            &format!("{prefix}_probe_user_clock_latency_seconds_total"),
            labels,
        );
        let mean_over = sum / received - DELAY_US * 1e-6;
        assert!(
            mean_over >= -1e-7 && mean_over <= user_sum / received,
            "{key}: mean RTT {} s",
            sum / received
        );
        let users: Vec<f64> = samples.iter().map(|(_, user)| *user).collect();
        eprintln!(
            "hwtstamp: {key} ({prefix}): {} replies, RTT - delay min {:.1} median {:.1} max \
             {:.1} µs; user-clock RTT median {:.1} µs",
            samples.len(),
            percentile(&excess, 0.0),
            percentile(&excess, 0.5),
            percentile(&excess, 1.0),
            percentile(&users, 0.5),
        );
    }
    let status = daemon.stop(libc::SIGTERM);
    assert!(status.success(), "{status}");
    let stderr = std::fs::read_to_string(log).unwrap();
    assert!(
        !stderr.contains("hardware timestamps unavailable"),
        "{stderr}"
    );
    // What SIOCSHWTSTAMP changed is put back at exit.
    assert!(
        stderr.contains("hwts0: hardware timestamping restored"),
        "{stderr}"
    );
    assert_eq!(nic.config(), UNSTAMPED);
}

/// `check` says the simulated NIC can stamp in hardware and a veth cannot.
#[test]
#[ignore = "needs the hwtstamp_veth module of the qemu guest (cargo xtask kernel-test)"]
fn check_reports_hardware_stamps_on_the_simulated_nic_only() {
    let nic = SimulatedNic::load(&[]);
    nic.exec(
        &nic.a,
        "ip",
        &[
            "link", "add", "npv0", "type", "veth", "peer", "name", "npv1",
        ],
    );
    nic.exec(&nic.a, "ip", &["link", "set", "npv0", "up"]);
    let bpffs = Bpffs::new();
    let pin_path = format!("--datapath.pin-path={}", bpffs.pin_path().display());
    let output = Command::new("ip")
        .args(["netns", "exec", &nic.a, daemon_path()])
        .args([
            "--ping.hard",
            "check",
            "--interface",
            A_IF,
            "--interface",
            "npv0",
        ])
        .args(["--web.listen-address", "127.0.0.1:9435", &pin_path])
        .output()
        .expect("starting network-probe check");
    let report = String::from_utf8_lossy(&output.stdout);
    let line = |item: &str| -> String {
        let lines: Vec<&str> = report
            .lines()
            .filter(|line| {
                line.get(5..)
                    .is_some_and(|rest| rest.starts_with(&format!("{item}: ")))
            })
            .collect();
        assert_eq!(lines.len(), 1, "one line about {item:?} in:\n{report}");
        lines[0].to_string()
    };
    let simulated = line("hardware timestamps hwts0");
    assert!(
        simulated.starts_with("OK   ") && simulated.contains("supported (--ping.hard uses them)"),
        "{report}"
    );
    let veth = line("hardware timestamps npv0");
    assert!(
        veth.starts_with("WARN ") && veth.contains("no hardware-transmit"),
        "{report}"
    );
    // check only reads: the NIC is as loaded.
    assert_eq!(nic.config(), UNSTAMPED);
}

/// A driver that advertises FILTER_ALL but refuses it in SIOCSHWTSTAMP (-ERANGE): the daemon
/// warns once, counts both of its sockets in `network_probe_ping_hardware_timestamp_fallbacks_total`, and
/// measures with software stamps, which know nothing of the simulated delay.
#[test]
#[ignore = "needs the hwtstamp_veth module of the qemu guest (cargo xtask kernel-test)"]
fn a_refused_receive_filter_falls_back_to_software_stamps() {
    const DELAY_US: f64 = 200_000.0;
    let nic = SimulatedNic::load(&[
        format!("delay_ns={}", DELAY_US as u64 * 1000),
        "refuse_filter_all=1".into(),
    ]);
    let log = "/tmp/hwtstamp-refused.log";
    let mut daemon = nic.daemon(log, &[]);
    let icmp = format!("target={B4}&target={B6}");
    let targets = [
        ("icmp", format!("ip=\"{B4}\"")),
        ("icmp", format!("ip=\"{B6}\"")),
    ];
    let body = gather(&daemon, &icmp, &targets, 10.0);
    // Both sockets (IPv4, IPv6) fell back; the warning below is logged once.
    assert_eq!(
        value(
            &body,
            "network_probe_ping_hardware_timestamp_fallbacks_total",
            ""
        ),
        2.0
    );
    for (key, (prefix, labels)) in [B4, B6].iter().zip(&targets) {
        // Software stamps on both ends of every sample but perhaps the socket's first reply
        // (as on a veth, tests/integration/ping.rs).
        assert!(
            value(
                &body,
                &format!("{prefix}_probe_user_clock_samples_total"),
                labels
            ) <= 1.0,
            "{key}"
        );
        let samples = window(&body, key);
        assert!(
            samples
                .iter()
                .all(|(rtt, _)| rtt.is_nan() || *rtt < DELAY_US),
            "{key}: a round trip shows the hardware-only delay: {samples:?}"
        );
    }
    assert_eq!(nic.config(), UNSTAMPED);
    let status = daemon.stop(libc::SIGTERM);
    assert!(status.success(), "{status}");
    let stderr = std::fs::read_to_string(log).unwrap();
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("hardware timestamps unavailable"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("hwts0: SIOCSHWTSTAMP") && warnings[0].contains("out of range"),
        "{stderr}"
    );
    // Nothing was changed, so nothing is put back.
    assert!(!stderr.contains("restored"), "{stderr}");
    assert_eq!(nic.config(), UNSTAMPED);
}

/// The lines of `stderr` containing `needle`.
fn lines_with<'a>(stderr: &'a str, needle: &str) -> Vec<&'a str> {
    stderr
        .lines()
        .filter(|line| line.contains(needle))
        .collect()
}

/// Asserts that every reply of `samples` measured `delay_us` exactly (the log rounds to
/// 0.1 µs; a microsecond allowed), on hardware stamps (never the user clock).
fn assert_exact(key: &str, samples: &[(f64, f64)], delay_us: f64) {
    for (rtt, _) in samples {
        assert!(
            (rtt - delay_us).abs() <= 1.0,
            "{key}: RTT {rtt} µs, simulated delay {delay_us} µs: {samples:?}"
        );
    }
}

/// The pair's clock frozen (`freeze_clock`): every departure stamp is the same instant, so a
/// round trip measured on hardware stamps is the simulated delay and nothing else, whatever
/// the peer kernel's turnaround. ICMP and TCP SYN over IPv4 and IPv6: every reply equals the
/// delay within a microsecond, and so does the mean of the exported sum.
#[test]
#[ignore = "needs the hwtstamp_veth module of the qemu guest (cargo xtask kernel-test)"]
fn frozen_clock_round_trips_equal_the_simulated_delay() {
    const DELAY_US: f64 = 3_000.0;
    let nic = SimulatedNic::load(&[
        format!("delay_ns={}", DELAY_US as u64 * 1000),
        "freeze_clock=1".into(),
    ]);
    let log = "/tmp/hwtstamp-frozen.log";
    let mut daemon = nic.daemon(log, &[]);
    let icmp = format!("target={B4}&target={B6}");
    let tcp = format!("target={B4}&target={B6}&tcp_port=9");
    probe(&daemon, &icmp);
    probe(&daemon, &tcp);
    let icmp_targets = [
        ("icmp", format!("ip=\"{B4}\"")),
        ("icmp", format!("ip=\"{B6}\"")),
    ];
    let tcp_targets = [
        ("tcp", format!("ip=\"{B4}\",port=\"9\"")),
        ("tcp", format!("ip=\"{B6}\",port=\"9\"")),
    ];
    for (query, targets, keys) in [
        (&icmp, &icmp_targets, [B4.to_string(), B6.to_string()]),
        (
            &tcp,
            &tcp_targets,
            [format!("{B4} port 9"), format!("{B6} port 9")],
        ),
    ] {
        let body = gather(&daemon, query, targets, 10.0);
        assert_eq!(value(&body, MISSING, ""), 0.0);
        for ((prefix, labels), key) in targets.iter().zip(&keys) {
            assert_eq!(
                value(
                    &body,
                    &format!("{prefix}_probe_user_clock_samples_total"),
                    labels
                ),
                0.0,
                "{key}"
            );
            let samples = window(&body, key);
            assert!(samples.len() >= 10, "{key}: {samples:?}");
            assert_exact(key, &samples, DELAY_US);
            let received = value(&body, &format!("{prefix}_probe_packets_recv_total"), labels);
            let sum = value(
                &body,
                &format!("{prefix}_probe_latency_seconds_total"),
                labels,
            );
            assert!(
                (sum / received - DELAY_US * 1e-6).abs() <= 1e-6,
                "{key}: mean RTT {} s",
                sum / received
            );
            eprintln!(
                "hwtstamp: frozen clock: {key} ({prefix}): {} replies, RTT min {:.1} max {:.1} µs, \
                 delay {DELAY_US} µs",
                samples.len(),
                samples
                    .iter()
                    .map(|(rtt, _)| *rtt)
                    .fold(f64::INFINITY, f64::min),
                samples.iter().map(|(rtt, _)| *rtt).fold(0.0, f64::max),
            );
        }
    }
    let status = daemon.stop(libc::SIGTERM);
    assert!(status.success(), "{status}");
    let stderr = std::fs::read_to_string(log).unwrap();
    assert!(
        lines_with(&stderr, "hardware timestamps").is_empty(),
        "{stderr}"
    );
    assert_eq!(nic.config(), UNSTAMPED);
}

/// The NIC takes no hardware transmit stamp (`skip_tx_stamps`): the error queue has only the
/// software one, so every reply is measured with software stamps on both ends (no simulated
/// delay in it). Each such reply counts in `network_probe_ping_hardware_timestamp_missing_total`
/// (exactly the replies received), one warning, the sockets still count as set up for hardware
/// (no fallback), the daemon runs on and restores the configuration at exit.
#[test]
#[ignore = "needs the hwtstamp_veth module of the qemu guest (cargo xtask kernel-test)"]
fn missing_transmit_stamps_are_counted_and_software_stamps_used() {
    const DELAY_US: f64 = 200_000.0;
    let nic = SimulatedNic::load(&[
        format!("delay_ns={}", DELAY_US as u64 * 1000),
        "skip_tx_stamps=1".into(),
    ]);
    let log = "/tmp/hwtstamp-missing.log";
    let mut daemon = nic.daemon(log, &[]);
    let icmp = format!("target={B4}&target={B6}");
    let targets = [
        ("icmp", format!("ip=\"{B4}\"")),
        ("icmp", format!("ip=\"{B6}\"")),
    ];
    gather(&daemon, &icmp, &targets, 10.0);
    // Receive stamping is on, transmit stamping asked for: the driver just does not stamp.
    assert_eq!(nic.config(), HardwareConfig::STAMP_ALL);
    // The peer stops answering; what was in flight settles (1 s timeout), then the figures
    // stand still and the count is exact.
    nic.exec(&nic.b, "ip", &["link", "set", B_IF, "down"]);
    thread::sleep(Duration::from_secs(2));
    let body = probe(&daemon, &format!("{icmp}&debug=true"));
    let mut received = 0.0;
    for (key, (prefix, labels)) in [B4, B6].iter().zip(&targets) {
        received += value(&body, &format!("{prefix}_probe_packets_recv_total"), labels);
        // Software stamps on both ends, but perhaps the socket's first reply (as on a veth).
        assert!(
            value(
                &body,
                &format!("{prefix}_probe_user_clock_samples_total"),
                labels
            ) <= 1.0,
            "{key}"
        );
        let samples = window(&body, key);
        assert!(samples.len() >= 10, "{key}: {samples:?}");
        assert!(
            samples
                .iter()
                .all(|(rtt, _)| rtt.is_nan() || *rtt < DELAY_US),
            "{key}: a round trip shows the hardware-only delay: {samples:?}"
        );
    }
    assert_eq!(value(&body, MISSING, ""), received, "{body}");
    assert_eq!(
        value(
            &body,
            "network_probe_ping_hardware_timestamp_fallbacks_total",
            ""
        ),
        0.0
    );
    let status = daemon.stop(libc::SIGTERM);
    assert!(status.success(), "{status}");
    let stderr = std::fs::read_to_string(log).unwrap();
    assert_eq!(lines_with(&stderr, MISSING_WARNING).len(), 1, "{stderr}");
    assert_eq!(
        lines_with(&stderr, "hardware timestamps").len(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("hwts0: hardware timestamping restored"),
        "{stderr}"
    );
    assert_eq!(nic.config(), UNSTAMPED);
}

/// `hwts0` goes down and comes back, and the driver forgets its stamping configuration on the
/// way (`forget_on_down`, as some NICs' resets do). The first reply after it is measured with
/// software stamps and counted, the daemon warns once and applies SIOCSHWTSTAMP again, and every
/// later reply is on hardware stamps again: exactly the simulated delay (frozen clock).
#[test]
#[ignore = "needs the hwtstamp_veth module of the qemu guest (cargo xtask kernel-test)"]
fn a_link_reset_that_loses_the_configuration_is_repaired() {
    const DELAY_US: f64 = 5_000.0;
    let nic = SimulatedNic::load(&[
        format!("delay_ns={}", DELAY_US as u64 * 1000),
        "freeze_clock=1".into(),
        "forget_on_down=1".into(),
    ]);
    let log = "/tmp/hwtstamp-reset.log";
    let mut daemon = nic.daemon(log, &[]);
    let query = format!("target={B4}");
    let target = [("icmp", format!("ip=\"{B4}\""))];
    let labels = &target[0].1;
    let body = gather(&daemon, &query, &target, 5.0);
    assert_eq!(nic.config(), HardwareConfig::STAMP_ALL);
    assert_eq!(value(&body, MISSING, ""), 0.0);
    let before = window(&body, B4);
    assert_exact(B4, &before, DELAY_US);

    nic.exec(&nic.a, "ip", &["link", "set", A_IF, "down"]);
    // The driver lost it: what the daemon must notice and repair.
    assert_eq!(nic.config(), UNSTAMPED);
    thread::sleep(Duration::from_millis(500));
    nic.exec(&nic.a, "ip", &["link", "set", A_IF, "up"]);
    nic.neighbours();
    let software_replies = |samples: &[(f64, f64)]| -> Vec<usize> {
        samples
            .iter()
            .enumerate()
            .filter(|(_, (rtt, _))| (rtt - DELAY_US).abs() > 1.0)
            .map(|(at, _)| at)
            .collect()
    };
    // Until 15 replies followed the last one on software stamps (at most 60 s: emulated).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (body, samples, software) = loop {
        let body = probe(&daemon, &format!("{query}&debug=true"));
        let samples = window(&body, B4);
        let software = software_replies(&samples);
        if software
            .last()
            .is_some_and(|&last| samples.len() >= last + 16)
        {
            break (body, samples, software);
        }
        assert!(
            Instant::now() < deadline,
            "no software-stamped reply followed by 15 others after the reset: {samples:?}"
        );
        thread::sleep(Duration::from_millis(500));
    };
    // Applied again by the daemon.
    assert_eq!(nic.config(), HardwareConfig::STAMP_ALL);
    // Every reply not on hardware stamps was counted, and only those. They are one run right
    // after the reset: the first one triggered the repair, and the others are replies to
    // requests that left before it (on 6.12 the probes sent while the link was down were held
    // back and left together when it came back: 10 in one run, against 1 on 6.1).
    let missing = value(&body, MISSING, "");
    assert_eq!(software.len() as f64, missing, "{samples:?}");
    assert!(missing >= 1.0, "{samples:?}");
    assert!(
        software[0] >= before.len() && software.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "not one run after the reset: {software:?} in {samples:?}"
    );
    assert_exact(B4, &samples[software.last().unwrap() + 1..], DELAY_US);
    // Software stamps on both ends of the unstamped replies: the socket is not new.
    assert_eq!(
        value(&body, "icmp_probe_user_clock_samples_total", labels),
        0.0
    );
    eprintln!(
        "hwtstamp: link reset: {missing} replies on software stamps ({:?} µs), then {} at \
         exactly {DELAY_US} µs",
        software.iter().map(|&at| samples[at].0).collect::<Vec<_>>(),
        samples.len() - software.last().unwrap() - 1,
    );
    let status = daemon.stop(libc::SIGTERM);
    assert!(status.success(), "{status}");
    let stderr = std::fs::read_to_string(log).unwrap();
    assert_eq!(lines_with(&stderr, MISSING_WARNING).len(), 1, "{stderr}");
    assert_eq!(
        lines_with(&stderr, "hardware timestamps").len(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("hwts0: hardware timestamping restored"),
        "{stderr}"
    );
    assert_eq!(nic.config(), UNSTAMPED);
}

/// Every outcome in the window of the probe log line that starts with `key`: the kernel RTT
/// (µs; NaN if measured with the user clock), or None for a lost probe.
fn outcomes(debug_body: &str, key: &str) -> Vec<Option<f64>> {
    let line = debug_body
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no log line for {key} in\n{debug_body}"));
    line.split("| rtt_us:")
        .nth(1)
        .unwrap()
        .split('|')
        .next()
        .unwrap()
        .split_whitespace()
        .map(|value| (value != "lost").then(|| value.parse().unwrap_or(f64::NAN)))
        .collect()
}

/// The pair is deleted and created again (the module unloaded and loaded again) under the
/// running daemon: the device its sockets are bound to is gone, then back under the same name
/// with a new index and stamping off. The probes sent meanwhile fail (`icmp_packets_error`) and
/// count lost with those in flight, no reply is measured on software stamps, the daemon warns
/// once that it opens the socket again, re-applies SIOCSHWTSTAMP, and every reply after is
/// exactly the simulated delay again (frozen clock).
#[test]
#[ignore = "needs the hwtstamp_veth module of the qemu guest (cargo xtask kernel-test)"]
fn a_re_created_interface_is_bound_again() {
    const DELAY_US: f64 = 4_000.0;
    let parameters = [
        format!("delay_ns={}", DELAY_US as u64 * 1000),
        "freeze_clock=1".into(),
    ];
    let nic = SimulatedNic::load(&parameters);
    let log = "/tmp/hwtstamp-recreate.log";
    let mut daemon = nic.daemon(log, &[]);
    let query = format!("target={B4}");
    let target = [("icmp", format!("ip=\"{B4}\""))];
    let labels = &target[0].1;
    let body = gather(&daemon, &query, &target, 5.0);
    assert_eq!(nic.config(), HardwareConfig::STAMP_ALL);
    let before = window(&body, B4);
    assert_exact(B4, &before, DELAY_US);
    let errors_before = value(&body, "icmp_packets_error_total", "");

    nic.reload(&parameters);
    // A new device, stamping off: the daemon has not been asked anything since.
    assert_eq!(nic.config(), UNSTAMPED);
    let is_exact = |outcome: &Option<f64>| outcome.is_some_and(|rtt| (rtt - DELAY_US).abs() <= 1.0);
    // Until 15 replies followed the last outcome that is not one (at most 60 s: emulated).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (body, all, others) = loop {
        let body = probe(&daemon, &format!("{query}&debug=true"));
        let all = outcomes(&body, B4);
        let others: Vec<usize> = (0..all.len()).filter(|&at| !is_exact(&all[at])).collect();
        if others.last().is_some_and(|&last| all.len() >= last + 16) {
            break (body, all, others);
        }
        assert!(
            Instant::now() < deadline,
            "no lost probe followed by 15 replies after the reload: {all:?}"
        );
        thread::sleep(Duration::from_millis(500));
    };
    // Applied again by the daemon on the new device.
    assert_eq!(nic.config(), HardwareConfig::STAMP_ALL);
    // Nothing was measured on software stamps (or the user clock): every outcome not at the
    // delay is a lost probe, and they are one run after the reload.
    assert_eq!(value(&body, MISSING, ""), 0.0, "{all:?}");
    assert!(others.iter().all(|&at| all[at].is_none()), "{all:?}");
    assert!(
        others[0] >= before.len() && others.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "not one run of lost probes after the reload: {others:?} in {all:?}"
    );
    assert_eq!(
        value(&body, "icmp_probe_user_clock_samples_total", labels),
        0.0
    );
    // The sends that failed while the socket was bound to the old device count as socket
    // errors, and as lost probes with those in flight when it went.
    let failed = value(&body, "icmp_packets_error_total", "") - errors_before;
    let lost = others.len() as f64;
    assert!(
        failed >= 1.0 && failed <= lost,
        "{failed} failed sends, {lost} lost: {all:?}"
    );
    let sent = value(&body, "icmp_probe_packets_sent_total", labels);
    let received = value(&body, "icmp_probe_packets_recv_total", labels);
    assert_eq!(received, (all.len() - others.len()) as f64, "{all:?}");
    assert_eq!(
        value(
            &body,
            "network_probe_ping_hardware_timestamp_fallbacks_total",
            ""
        ),
        0.0
    );
    eprintln!(
        "hwtstamp: re-created: {} replies at {DELAY_US} µs before, {lost} lost ({failed} sends \
         failed on the old device), then {} at exactly {DELAY_US} µs (sent {sent}, received \
         {received})",
        before.len(),
        all.len() - others.last().unwrap() - 1,
    );
    let status = daemon.stop(libc::SIGTERM);
    assert!(status.success(), "{status}");
    let stderr = std::fs::read_to_string(log).unwrap();
    let warnings = lines_with(&stderr, "was re-created");
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("interface hwts0") && warnings[0].contains("ICMP IPv4"),
        "{stderr}"
    );
    assert!(
        lines_with(&stderr, "hardware timestamps").is_empty(),
        "{stderr}"
    );
    assert!(
        stderr.contains("hwts0: hardware timestamping restored"),
        "{stderr}"
    );
    assert_eq!(nic.config(), UNSTAMPED);
}
