//! Every start-up error an operator can hit: one line on stderr naming the problem and what to
//! do, and a documented non-zero exit code. Each runs in a namespace this test creates, so the
//! daemon never touches the host's interfaces even if a check regressed.

use std::{net::TcpListener, process::Command};

use network_probe_testkit::{VethPair, daemon_path, in_netns};

/// Runs the daemon to completion in `ns` through `wrapper` (e.g. setpriv): (exit code, stderr).
fn run_in(ns: &str, wrapper: &[&str], args: &[&str]) -> (i32, String) {
    let output = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(wrapper)
        .arg(daemon_path())
        .args(args)
        .output()
        .expect("starting the daemon");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().expect("exited, not killed"), stderr)
}

fn assert_one_line(stderr: &str) {
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "expected one line, got {stderr:?}"
    );
    assert!(stderr.starts_with("network-probe: error: "), "{stderr:?}");
}

#[test]
fn not_root_names_the_capability() {
    let pair = VethPair::new();
    let (code, stderr) = run_in(
        &pair.a,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        &["--interface", &pair.a_if],
    );
    assert_eq!(code, 3, "{stderr}");
    assert_one_line(&stderr);
    assert!(
        stderr.contains("missing capability CAP_BPF (effective set of uid 65534)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("setcap cap_bpf,cap_perfmon,cap_net_admin=ep"),
        "{stderr}"
    );
}

#[test]
fn root_without_cap_bpf_names_it() {
    let pair = VethPair::new();
    let (code, stderr) = run_in(
        &pair.a,
        &[
            "setpriv",
            "--bounding-set=-bpf,-sys_admin",
            "--inh-caps=-all",
        ],
        &["--interface", &pair.a_if],
    );
    assert_eq!(code, 3, "{stderr}");
    assert_one_line(&stderr);
    assert!(
        stderr.contains("missing capability CAP_BPF (effective set of uid 0)"),
        "{stderr}"
    );
}

#[test]
fn root_without_cap_perfmon_names_it() {
    let pair = VethPair::new();
    let (code, stderr) = run_in(
        &pair.a,
        &[
            "setpriv",
            "--bounding-set=-perfmon,-sys_admin",
            "--inh-caps=-all",
        ],
        &["--interface", &pair.a_if],
    );
    assert_eq!(code, 3, "{stderr}");
    assert_one_line(&stderr);
    assert!(
        stderr.contains("missing capability CAP_PERFMON"),
        "{stderr}"
    );
}

#[test]
fn root_without_cap_net_admin_names_it() {
    let pair = VethPair::new();
    let (code, stderr) = run_in(
        &pair.a,
        &["setpriv", "--bounding-set=-net_admin", "--inh-caps=-all"],
        &["--interface", &pair.a_if],
    );
    assert_eq!(code, 3, "{stderr}");
    assert_one_line(&stderr);
    assert!(
        stderr.contains("missing capability CAP_NET_ADMIN"),
        "{stderr}"
    );
}

#[test]
fn missing_interface_is_named() {
    let pair = VethPair::new();
    let (code, stderr) = run_in(
        &pair.a,
        &[],
        &["--interface", &pair.a_if, "--interface", "np-nope0"],
    );
    assert_eq!(code, 4, "{stderr}");
    assert_one_line(&stderr);
    assert_eq!(
        stderr.trim_end(),
        "network-probe: error: interface \"np-nope0\" does not exist (list interfaces with `ip link`)"
    );
}

#[test]
fn interface_index_beyond_the_datapath_limit_is_named() {
    let pair = VethPair::new();
    // Interface indexes keep growing on hosts that create many (container veths); the
    // datapath's index -> slot array covers indexes below 65536.
    network_probe_testkit::sh(
        "ip",
        &[
            "-n", &pair.a, "link", "add", "np-high0", "index", "70000", "type", "veth", "peer",
            "name", "np-high1",
        ],
    );
    let (code, stderr) = run_in(
        &pair.a,
        &[],
        &[
            "--interface",
            "np-high0",
            "--datapath.pin-path=",
            "--log.level=error",
        ],
    );
    // Attaching failed: exit code 1 (see README).
    assert_eq!(code, 1, "{stderr}");
    assert_one_line(&stderr);
    assert!(
        stderr.contains(
            "cannot watch np-high0: its interface index 70000 is beyond what the datapath's \
             IFINDEX_SLOTS map covers (indexes below 65536)"
        ),
        "{stderr}"
    );
}

#[test]
fn no_default_route_asks_for_interface() {
    let pair = VethPair::new();
    let (code, stderr) = run_in(&pair.a, &[], &[]);
    assert_eq!(code, 4, "{stderr}");
    assert_one_line(&stderr);
    assert!(stderr.contains("no default route"), "{stderr}");
    assert!(stderr.contains("--interface"), "{stderr}");
}

#[test]
fn address_in_use_is_explained() {
    let pair = VethPair::new();
    let ns = pair.a.clone();
    let holder = in_netns(&ns, || TcpListener::bind("127.0.0.1:9435").expect("bind"));
    let (code, stderr) = run_in(
        &pair.a,
        &[],
        &[
            "--interface",
            &pair.a_if,
            "--web.listen-address",
            "127.0.0.1:9435",
        ],
    );
    drop(holder);
    assert_eq!(code, 5, "{stderr}");
    assert_one_line(&stderr);
    assert!(
        stderr.contains("cannot listen on 127.0.0.1:9435: Address already in use"),
        "{stderr}"
    );
    assert!(
        stderr.contains("choose another with --web.listen-address"),
        "{stderr}"
    );
}

#[test]
fn bad_flag_values_are_usage_errors() {
    let pair = VethPair::new();
    let (code, stderr) = run_in(&pair.a, &[], &["--log.level", "loud"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("'loud'"), "{stderr}");
    let (code, stderr) = run_in(
        &pair.a,
        &[],
        &["--interface", &pair.a_if, "--web.listen-address", "9435"],
    );
    assert_eq!(code, 2, "{stderr}");
    assert_one_line(&stderr);
    assert!(
        stderr.contains("invalid --web.listen-address \"9435\""),
        "{stderr}"
    );
}
