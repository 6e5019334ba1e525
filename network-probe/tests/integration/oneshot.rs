//! `network-probe probe MODULE TARGET [KEY=VALUE...]` inside namespaces this test creates:
//! a ping of the veth peer prints the ping prober's metrics and exits 0, with the reply count
//! checked against the peer's own kernel counter of echo replies sent (nstat); a failing
//! probe exits 1; bad parameters exit 2 naming them.

use std::process::Command;

use network_probe_testkit::{VethPair, daemon_path, dotted, nstat, sample};

/// Runs `network-probe ARGS` in `ns`: (exit code, stdout, stderr).
fn run_in(ns: &str, args: &[&str]) -> (i32, String, String) {
    let output = Command::new("ip")
        .args(["netns", "exec", ns, daemon_path()])
        .args(args)
        .output()
        .expect("starting network-probe");
    (
        output.status.code().expect("exited, not killed"),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn ping_of_the_peer_prints_metrics_and_exits_0() {
    let pair = VethPair::new();
    let peer = dotted(pair.b_addr);
    let replies_before = nstat(&pair.b, "IcmpOutEchoReps");
    let (code, metrics, log) = run_in(
        &pair.a,
        &["--ping.timeout", "500ms", "probe", "ping", &peer],
    );
    assert_eq!(code, 0, "{metrics}{log}");
    let replies = nstat(&pair.b, "IcmpOutEchoReps") - replies_before;
    let labels = format!("ip=\"{peer}\"");
    assert_eq!(
        sample(&metrics, "ping_probe_success", ""),
        Some(1.0),
        "{metrics}"
    );
    let sent = sample(&metrics, "icmp_probe_packets_sent_total", &labels).unwrap();
    let received = sample(&metrics, "icmp_probe_packets_recv_total", &labels).unwrap();
    // One echo per interval (2 s by default): the one-shot waited one 500 ms timeout.
    assert_eq!(sent, 1.0, "{metrics}");
    assert_eq!(
        received, replies as f64,
        "peer sent {replies} echo replies\n{metrics}"
    );
    assert_eq!(received, 1.0, "{metrics}");
    assert!(
        sample(&metrics, "icmp_probe_latency_seconds", &labels).unwrap() > 0.0,
        "{metrics}"
    );
    // The probe log goes to stderr, the metrics (classic text format) to stdout.
    assert!(log.contains(&format!("{peer} resolved to")), "{log}");
    assert!(log.contains("sent 1 received 1"), "{log}");
    assert!(!metrics.contains("# EOF"), "{metrics}");
}

#[test]
fn a_failed_probe_exits_1() {
    let pair = VethPair::new();
    let peer = dotted(pair.b_addr);
    // No TFTP server in b: the peer's kernel answers port unreachable.
    let (code, metrics, log) = run_in(
        &pair.a,
        &[
            "probe",
            "tftp",
            &peer,
            "tftp_filename=boot.img",
            "--timeout",
            "3s",
        ],
    );
    assert_eq!(code, 1, "{metrics}{log}");
    assert!(log.contains("probe failed"), "{log}");
    assert!(metrics.contains("tftp"), "{metrics}");
}

#[test]
fn bad_parameters_exit_2_naming_them() {
    let pair = VethPair::new();
    let peer = dotted(pair.b_addr);
    let (code, _, stderr) = run_in(&pair.a, &["probe", "ping", &peer, "tcp_port=0"]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        "network-probe: error: bad probe parameters: parameter \"tcp_port\": \"0\" is not a \
         port from 1 to 65535"
    );
    let (code, _, stderr) = run_in(&pair.a, &["probe", "ping", &peer, "colour"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("parameter \"colour\" is not KEY=VALUE"),
        "{stderr}"
    );
    let (code, _, stderr) = run_in(&pair.a, &["probe", "nope", &peer]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("unknown module \"nope\""), "{stderr}");
}

#[test]
fn a_module_of_the_config_file_sets_the_probe_options() {
    let pair = VethPair::new();
    let peer = dotted(pair.b_addr);
    let config = std::env::temp_dir().join(format!("np-oneshot-{}.yml", std::process::id()));
    std::fs::write(
        &config,
        "modules:\n  peer_closed_port:\n    prober: ping\n    timeout: 5s\n    ping:\n      tcp_port: 9\n",
    )
    .unwrap();
    let config_arg = format!("--config.file={}", config.display());
    let rsts_before = nstat(&pair.b, "TcpOutRsts");
    let (code, metrics, log) = run_in(
        &pair.a,
        &[
            &config_arg,
            "--ping.timeout",
            "500ms",
            "probe",
            "peer_closed_port",
            &peer,
        ],
    );
    // The peer's kernel answers the SYN to its closed port 9 with a RST: a reply, so success.
    assert_eq!(code, 0, "{metrics}{log}");
    let rsts = nstat(&pair.b, "TcpOutRsts") - rsts_before;
    let labels = format!("ip=\"{peer}\",port=\"9\"");
    assert_eq!(
        sample(&metrics, "tcp_probe_rst_total", &labels),
        Some(rsts as f64),
        "the peer sent {rsts} RSTs\n{metrics}"
    );
    assert_eq!(rsts, 1, "{metrics}");
    // Unknown modules name the configured ones.
    let (code, _, stderr) = run_in(&pair.a, &[&config_arg, "probe", "nope", &peer]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr
            .contains("unknown module \"nope\" (configured: iperf3, peer_closed_port, ping, tftp)"),
        "{stderr}"
    );
    let _ = std::fs::remove_file(config);
}

/// `--ping.interface4 auto` binds each target's socket to the interface the kernel routes that
/// target out of, not to the default-route interface: in a namespace whose default route leaves
/// by another interface, a ping of the loopback address and one of the veth peer (reached by
/// its connected route) both get every reply. The references are the kernel's own counters:
/// the namespace's echo requests received for loopback, the peer's echo replies sent.
#[test]
fn auto_interface_follows_the_route_to_each_target() {
    let pair = VethPair::new();
    let peer = dotted(pair.b_addr);
    // A default route out of an interface that reaches neither target (both ends of a second
    // veth pair stay in this namespace).
    let other = format!("{}d", pair.a_if);
    pair.exec(
        &pair.a,
        "ip",
        &[
            "link",
            "add",
            &other,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{other}p"),
        ],
    );
    pair.exec(&pair.a, "ip", &["link", "set", &other, "up"]);
    pair.exec(&pair.a, "ip", &["route", "add", "default", "dev", &other]);

    let echoes_before = nstat(&pair.a, "IcmpInEchos");
    let (code, metrics, log) = run_in(
        &pair.a,
        &["--ping.timeout", "500ms", "probe", "ping", "127.0.0.1"],
    );
    assert_eq!(code, 0, "{metrics}{log}");
    let echoes = nstat(&pair.a, "IcmpInEchos") - echoes_before;
    let labels = "ip=\"127.0.0.1\"";
    assert_eq!(
        sample(&metrics, "icmp_probe_packets_sent_total", labels),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "icmp_probe_packets_recv_total", labels),
        Some(1.0),
        "{metrics}{log}"
    );
    assert_eq!(echoes, 1, "the loopback device saw {echoes} echo requests");

    let replies_before = nstat(&pair.b, "IcmpOutEchoReps");
    let (code, metrics, log) = run_in(
        &pair.a,
        &["--ping.timeout", "500ms", "probe", "ping", &peer],
    );
    assert_eq!(code, 0, "{metrics}{log}");
    let replies = nstat(&pair.b, "IcmpOutEchoReps") - replies_before;
    let labels = format!("ip=\"{peer}\"");
    assert_eq!(
        sample(&metrics, "icmp_probe_packets_recv_total", &labels),
        Some(1.0),
        "{metrics}{log}"
    );
    assert_eq!(replies, 1, "the peer sent {replies} echo replies");
}
