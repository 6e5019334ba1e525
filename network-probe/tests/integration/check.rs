//! `network-probe check` run inside namespaces this test creates: what it reports is compared
//! with what the kernel says independently (the interface's state from `ip link`, a socket
//! held by the test, the capability sets setpriv imposes), and the exit code follows the FAILs.

use std::{net::TcpListener, process::Command};

use network_probe_testkit::{Bpffs, VethPair, daemon_path, in_netns};

/// Runs `network-probe ARGS` in `ns` behind `wrapper`: (exit code, stdout, stderr).
fn run_in(ns: &str, wrapper: &[&str], args: &[&str]) -> (i32, String, String) {
    let output = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(wrapper)
        .arg(daemon_path())
        .args(args)
        .output()
        .expect("starting network-probe");
    (
        output.status.code().expect("exited, not killed"),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The report line about `item`, asserting there is exactly one.
fn line<'a>(report: &'a str, item: &str) -> &'a str {
    let lines: Vec<&str> = report
        .lines()
        .filter(|line| {
            line.get(5..)
                .is_some_and(|rest| rest.starts_with(&format!("{item}: ")))
        })
        .collect();
    assert_eq!(lines.len(), 1, "one line about {item:?} in:\n{report}");
    lines[0]
}

/// `check` as on a host with bpffs (a private instance: `ip netns exec` hides the host's).
fn check(pair: &VethPair, wrapper: &[&str], extra: &[&str]) -> (i32, String, String) {
    let bpffs = Bpffs::new();
    let pin_path = format!("--datapath.pin-path={}", bpffs.pin_path().display());
    let mut args = vec![
        "check",
        "--interface",
        &pair.a_if,
        "--web.listen-address",
        "127.0.0.1:9435",
        &pin_path,
    ];
    args.extend_from_slice(extra);
    run_in(&pair.a, wrapper, &args)
}

#[test]
fn a_capable_host_passes_with_ok_lines() {
    let pair = VethPair::new();
    let (code, report, stderr) = check(&pair, &[], &[]);
    assert_eq!(code, 0, "{report}{stderr}");
    for item in [
        "capability CAP_BPF",
        "capability CAP_PERFMON",
        "capability CAP_NET_ADMIN",
        "capability CAP_NET_RAW",
        "BTF",
        "TCX",
        "bpffs",
        "eBPF programs",
        "raw sockets",
        "listen address",
    ] {
        assert!(line(&report, item).starts_with("OK   "), "{report}");
    }
    assert!(
        line(&report, "eBPF programs").contains("loaded and verified for --datapath.ingress tc"),
        "{report}"
    );
    // The kernel says the interface is up; check agrees.
    let link = pair.exec(&pair.a, "ip", &["link", "show", "dev", &pair.a_if]);
    assert!(link.contains(",UP"), "{link}");
    assert_eq!(
        line(&report, &format!("interface {}", pair.a_if)),
        format!("OK   interface {}: exists and is up", pair.a_if)
    );
    // veth has no hardware stamping (`ethtool -T` agrees): fine without --ping.hard.
    let ethtool = pair.exec(&pair.a, "ethtool", &["-T", &pair.a_if]);
    assert!(!ethtool.contains("hardware-transmit"), "{ethtool}");
    let stamps = line(&report, &format!("hardware timestamps {}", pair.a_if));
    assert!(stamps.starts_with("OK   "), "{stamps}");
    assert!(stamps.contains("no hardware-transmit"), "{stamps}");
    // A new namespace's net.ipv4.ping_group_range is "1 0": no datagram ICMP sockets.
    let datagram = line(&report, "ICMP datagram sockets");
    assert!(datagram.starts_with("WARN "), "{datagram}");
    assert!(datagram.contains("\"1 0\""), "{datagram}");
    assert!(
        datagram.contains("; fix: sysctl -w net.ipv4.ping_group_range=\"0 0\""),
        "{datagram}"
    );
    assert!(report.trim_end().ends_with(" 0 FAIL"), "{report}");

    // With the range opened, datagram sockets are OK.
    pair.exec(&pair.a, "sysctl", &["-qw", "net.ipv4.ping_group_range=0 0"]);
    let (_, report, _) = check(&pair, &[], &[]);
    assert!(
        line(&report, "ICMP datagram sockets").starts_with("OK   "),
        "{report}"
    );

    // --ping.hard turns missing hardware stamping into a warning, not a failure.
    let (code, report, _) = check(&pair, &[], &["--ping.hard"]);
    assert_eq!(
        code, 2,
        "--ping.hard is a daemon flag, given before `check`: {report}"
    );
    let (code, report, stderr) = run_in(
        &pair.a,
        &[],
        &[
            "--ping.hard",
            "check",
            "--interface",
            &pair.a_if,
            "--datapath.pin-path=",
        ],
    );
    assert_eq!(code, 0, "{report}{stderr}");
    assert!(
        line(&report, &format!("hardware timestamps {}", pair.a_if)).starts_with("WARN "),
        "{report}"
    );
}

#[test]
fn without_cap_bpf_the_capability_line_fails_with_the_fix() {
    let pair = VethPair::new();
    let (code, report, stderr) = check(
        &pair,
        &[
            "setpriv",
            "--bounding-set=-bpf,-sys_admin",
            "--inh-caps=-all",
        ],
        &[],
    );
    assert_eq!(code, 1, "{report}{stderr}");
    assert_eq!(
        line(&report, "capability CAP_BPF"),
        "FAIL capability CAP_BPF: missing from the effective set of uid 0 (needed for loading \
         and attaching the programs); fix: run as root, or `setcap \
         cap_bpf,cap_perfmon,cap_net_admin,cap_net_raw=ep <binary>`, or \
         AmbientCapabilities=CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_NET_RAW in the systemd unit"
    );
    assert!(line(&report, "capability CAP_PERFMON").starts_with("OK   "));
    // The kernel refuses the trial load for the same reason.
    let load = line(&report, "eBPF programs");
    assert!(
        load.starts_with("FAIL eBPF programs: trial load failed"),
        "{load}"
    );
    assert!(load.contains("Operation not permitted"), "{load}");
    assert!(report.trim_end().ends_with(" 2 FAIL"), "{report}");
}

#[test]
fn without_cap_net_raw_raw_sockets_only_warn() {
    let pair = VethPair::new();
    let (code, report, stderr) = check(
        &pair,
        &["setpriv", "--bounding-set=-net_raw", "--inh-caps=-all"],
        &[],
    );
    assert_eq!(code, 0, "{report}{stderr}");
    assert!(line(&report, "capability CAP_NET_RAW").starts_with("WARN "));
    let raw = line(&report, "raw sockets");
    assert!(
        raw.starts_with("WARN raw sockets: not allowed (Operation not permitted"),
        "{raw}"
    );
}

#[test]
fn a_missing_or_down_interface_and_a_taken_port_are_reported() {
    let pair = VethPair::new();
    let holder = in_netns(&pair.a, || {
        TcpListener::bind("127.0.0.1:9435").expect("bind")
    });
    pair.exec(&pair.a, "ip", &["link", "set", &pair.a_if, "down"]);
    let (code, report, stderr) = check(&pair, &[], &["--interface", "np-nope0"]);
    drop(holder);
    assert_eq!(code, 1, "{report}{stderr}");
    assert_eq!(
        line(&report, "interface np-nope0"),
        "FAIL interface np-nope0: \"np-nope0\" does not exist; fix: name an existing interface \
         with --interface (list them with `ip link`)"
    );
    assert_eq!(
        line(&report, &format!("interface {}", pair.a_if)),
        format!(
            "WARN interface {0}: exists but is down (programs attach; traffic is counted once \
             it is up); fix: ip link set {0} up",
            pair.a_if
        )
    );
    let listen = line(&report, "listen address");
    assert!(
        listen.starts_with(
            "FAIL listen address: cannot listen on 127.0.0.1:9435: Address already in use"
        ),
        "{listen}"
    );
    assert!(report.trim_end().ends_with(" 2 FAIL"), "{report}");
}

#[test]
fn a_pin_path_outside_bpffs_fails_with_the_fix() {
    let pair = VethPair::new();
    // `ip netns exec` mounts a fresh sysfs: /sys/fs/bpf is not bpffs in there.
    let (code, report, stderr) = run_in(
        &pair.a,
        &[],
        &[
            "check",
            "--interface",
            &pair.a_if,
            "--web.listen-address",
            "127.0.0.1:9435",
        ],
    );
    assert_eq!(code, 1, "{report}{stderr}");
    assert_eq!(
        line(&report, "bpffs"),
        "FAIL bpffs: --datapath.pin-path /sys/fs/bpf/network-probe: /sys/fs/bpf is not on bpffs \
         (mount it with `mount -t bpf bpf /sys/fs/bpf`, or pass --datapath.pin-path=\"\" to keep \
         the maps only while the daemon runs); fix: mount -t bpf bpf /sys/fs/bpf, or run with \
         --datapath.pin-path=\"\" (counters then restart from zero with the daemon)"
    );
    assert!(report.trim_end().ends_with(" 1 FAIL"), "{report}");
}
