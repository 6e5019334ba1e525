//! `/probe` routing against the daemon in a namespace this test creates: the `--probe.allow`
//! target allowlist (403 naming the refused target; the peer's own ICMP counter shows that a
//! refused probe sent nothing) and `--web.probe-listen` listeners whose `/probe` needs no
//! `module=`, plus start-up errors of bad values of both flags. Host names resolve through
//! glibc from a hosts file the test writes for its namespace (`ip netns exec` mounts
//! /etc/netns/NS/hosts over /etc/hosts), so no DNS server is involved.

use std::{
    net::SocketAddr,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use network_probe_testkit::{Daemon, VethPair, daemon_path, dotted, http, nstat, sample};

/// Where the `ping` probe listener of these tests listens, inside namespace `a`.
const PING_LISTEN: &str = "127.0.0.1:9116";

fn start(pair: &VethPair, extra: &[&str]) -> Daemon {
    let mut args = vec![
        "--interface",
        pair.a_if.as_str(),
        "--ping.interval",
        "20ms",
        "--ping.timeout",
        "500ms",
    ];
    args.extend_from_slice(extra);
    Daemon::start(&pair.a, &args)
}

/// /etc/netns/NS/, holding a hosts file `ip netns exec` mounts over /etc/hosts for programs
/// started in namespace NS; removed on drop.
struct NetnsHosts(std::path::PathBuf);

impl NetnsHosts {
    fn write(ns: &str, lines: &str) -> NetnsHosts {
        let dir = std::path::Path::new("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts"), lines).unwrap();
        NetnsHosts(dir)
    }
}

impl Drop for NetnsHosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Echo requests namespace `b` has received, by its kernel's count.
fn echoes_at_b(pair: &VethPair) -> u64 {
    nstat(&pair.b, "IcmpInEchos")
}

/// Waits up to 5 s for b to count an echo request.
fn wait_for_echoes(pair: &VethPair) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let echoes = echoes_at_b(pair);
        if echoes > 0 || Instant::now() > deadline {
            return echoes;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn targets_outside_the_allowlist_get_403_and_no_packet() {
    let pair = VethPair::new();
    let (a4, b4) = (dotted(pair.a_addr), dotted(pair.b_addr));
    let allow_b = format!("{b4}/32");
    let _hosts = NetnsHosts::write(
        &pair.a,
        &format!("127.0.0.1 localhost\n{b4} peer.lab\n{a4} self.lab\n"),
    );
    let daemon = start(
        &pair,
        &["--probe.allow", &allow_b, "--probe.allow", "localhost"],
    );

    // One allowed and one refused target: the whole request is refused, naming the bad one.
    let (status, body) = daemon
        .get(&format!("/probe?module=ping&target={b4}&target={a4}"))
        .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(&format!("target \"{a4}\"")), "{body}");
    // Other modules are checked the same way, ports and all.
    let (status, body) = daemon
        .get(&format!("/probe?module=tftp&target={a4}:69"))
        .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(&format!("target \"{a4}:69\"")), "{body}");
    // An address is not matched against host patterns, even the one its name would match.
    let (status, body) = daemon.get("/probe?module=ping&target=127.0.0.1").unwrap();
    assert_eq!(status, 403, "{body}");
    // A name matching no pattern is resolved, and its addresses are outside every network.
    let (status, body) = daemon.get("/probe?module=ping&target=self.lab").unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains(&format!("target \"self.lab\" resolves to {a4}")),
        "{body}"
    );
    // A name that does not resolve is refused too (nothing to check its addresses against).
    let (status, body) = daemon.get("/probe?module=ping&target=nowhere.lab").unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("target \"nowhere.lab\""), "{body}");
    // Nothing was sent to b, although b4 was among the refused request's targets.
    thread::sleep(Duration::from_millis(300));
    assert_eq!(echoes_at_b(&pair), 0);

    // The allowed target alone is probed, and b's kernel sees the echo requests.
    let (status, body) = daemon
        .get(&format!("/probe?module=ping&target={b4}"))
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(sample(&body, "ping_probe_success", ""), Some(1.0), "{body}");
    assert!(wait_for_echoes(&pair) > 0, "b saw no echo request");
    // A name matching no pattern whose every address lies in an allowed network is allowed.
    let (status, body) = daemon.get("/probe?module=ping&target=peer.lab").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!("ip=\"{b4}\"")), "{body}");
    // A name matching a host pattern is allowed before (and without) any address check.
    let (status, body) = daemon
        .get("/probe?module=ping&target=localhost&ip_version=4")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("ip=\"127.0.0.1\""), "{body}");
}

#[test]
fn a_probe_listener_supplies_the_module() {
    let pair = VethPair::new();
    let b4 = dotted(pair.b_addr);
    let allow = format!("{b4}/32");
    let listen = format!("ping={PING_LISTEN}");
    let daemon = start(
        &pair,
        &["--web.probe-listen", &listen, "--probe.allow", &allow],
    );
    let ping_port: SocketAddr = PING_LISTEN.parse().unwrap();

    // The icmp-exporter's scrape: /probe?target=..., no module.
    let (status, body) = http(&pair.a, ping_port, "GET", &format!("/probe?target={b4}")).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(sample(&body, "ping_probe_success", ""), Some(1.0), "{body}");
    let active = format!("ip=\"{b4}\"");
    assert!(
        body.contains(&format!("icmp_probe_packets_sent_total{{{active}}}")),
        "{body}"
    );
    assert!(wait_for_echoes(&pair) > 0, "b saw no echo request");

    // The main port still requires module=.
    let (status, body) = daemon.get(&format!("/probe?target={b4}")).unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("missing parameter \"module\""), "{body}");
    // An explicit module wins over the listener's.
    let (status, body) = http(
        &pair.a,
        ping_port,
        "GET",
        &format!("/probe?module=nope&target={b4}"),
    )
    .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("unknown module \"nope\""), "{body}");
    // The allowlist applies on every listener.
    let (status, body) = http(&pair.a, ping_port, "GET", "/probe?target=10.9.9.9").unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("target \"10.9.9.9\""), "{body}");
    // The other routes are served there too.
    let (status, _) = http(&pair.a, ping_port, "GET", "/-/healthy").unwrap();
    assert_eq!(status, 200);
    // SIGTERM still ends the daemon cleanly with the extra listener running.
    let mut daemon = daemon;
    assert!(daemon.stop(libc::SIGTERM).success());
}

#[test]
fn bad_flag_values_stop_start_up_with_exit_2_naming_them() {
    let pair = VethPair::new();
    for (flag, value, said) in [
        ("--probe.allow", "10.1.0.0/8", "did you mean 10.0.0.0/8?"),
        ("--probe.allow", "10.0.0.0/40", "prefix \"40\""),
        ("--probe.allow", "bad host", "neither a network"),
        (
            "--web.probe-listen",
            "icmp=:9116",
            "unknown module \"icmp\"",
        ),
        ("--web.probe-listen", "ping=9116", "address \"9116\""),
        ("--web.probe-listen", "ping", "is not MODULE=ADDRESS"),
    ] {
        let output = Command::new("ip")
            .args([
                "netns",
                "exec",
                &pair.a,
                daemon_path(),
                "--interface",
                &pair.a_if,
            ])
            .args([flag, value])
            .output()
            .expect("starting the daemon");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
        assert!(stderr.contains(&format!("{value:?}")), "{stderr}");
        assert!(stderr.contains(said), "{flag} {value}: {stderr}");
    }
}
