//! Least privilege after start-up (src/privileges.rs): the kernel's own report of the daemon's
//! capability sets (`/proc/<pid>/task/*/status`, every thread) must equal exactly the kept set
//! (CAP_NET_ADMIN and CAP_NET_RAW for root), and the daemon must still do what needs
//! privileges afterwards: serve metrics read from the kernel maps, ping the peer over a raw
//! ICMP socket opened after the drop (the namespace's net.ipv4.ping_group_range admits nobody,
//! so only CAP_NET_RAW makes it work), and attach its programs (TC, and XDP at ingress) to an
//! interface that is deleted and created again, as the kernel's own listing shows.

use std::{
    fs, thread,
    time::{Duration, Instant},
};

use aya::programs::TcAttachType;
use network_probe::kernel::privileges::StatusCapabilities;
use network_probe_testkit::{Daemon, VethPair, attached_programs, dotted, sample};

/// CAP_NET_ADMIN (12) and CAP_NET_RAW (13).
const KEPT_AS_ROOT: u64 = 0x3000;
/// CAP_NET_ADMIN alone.
const NET_ADMIN: u64 = 0x1000;
/// CAP_NET_ADMIN, CAP_PERFMON (38), CAP_BPF (39): what the non-root test grants.
const THREE: u64 = 0x0000_00c0_0000_1000;

/// The capability sets and NoNewPrivs of every thread of `pid`, as the kernel reports them.
fn thread_capabilities(pid: u32) -> Vec<(StatusCapabilities, String)> {
    let mut threads = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).expect("task list") {
        let status = fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let no_new_privs = status
            .lines()
            .find_map(|line| line.strip_prefix("NoNewPrivs:"))
            .unwrap_or("?")
            .trim()
            .to_string();
        threads.push((StatusCapabilities::parse(&status).unwrap(), no_new_privs));
    }
    assert!(!threads.is_empty());
    threads
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn root_keeps_exactly_net_admin_and_net_raw_and_still_works_with_tc() {
    keeps_exactly_the_runtime_set_and_still_works("tc");
}

#[test]
fn root_keeps_exactly_net_admin_and_net_raw_and_still_works_with_xdp() {
    keeps_exactly_the_runtime_set_and_still_works("xdp-generic");
}

/// Whether `ifname` in `ns` has an XDP program, as `ip link` reports it.
fn has_xdp(pair: &VethPair, ifname: &str) -> bool {
    pair.exec(&pair.a, "ip", &["link", "show", "dev", ifname])
        .contains("xdp")
}

fn keeps_exactly_the_runtime_set_and_still_works(ingress: &str) {
    let xdp = ingress != "tc";
    let pair = VethPair::new();
    let add_churn = || {
        pair.exec(
            &pair.a,
            "ip",
            &[
                "link", "add", "npchurn0", "type", "veth", "peer", "name", "npchurn1",
            ],
        )
    };
    add_churn();
    let daemon = Daemon::start(
        &pair.a,
        &[
            "--interface",
            &pair.a_if,
            "--interface",
            "npchurn0",
            "--ping.interval",
            "100ms",
            "--ping.timeout",
            "1s",
            "--datapath.ingress",
            ingress,
        ],
    );
    for (caps, no_new_privs) in thread_capabilities(daemon.child.id()) {
        assert_eq!(caps.effective, KEPT_AS_ROOT, "CapEff {caps:x?}");
        assert_eq!(caps.permitted, KEPT_AS_ROOT, "CapPrm {caps:x?}");
        assert_eq!(caps.bounding, KEPT_AS_ROOT, "CapBnd {caps:x?}");
        assert_eq!(caps.inheritable, 0, "CapInh {caps:x?}");
        assert_eq!(caps.ambient, 0, "CapAmb {caps:x?}");
        assert_eq!(no_new_privs, "1");
    }

    // Metrics still served, programs still counting.
    let scrape = daemon.scrape();
    let program = if xdp { "xdp_ingress" } else { "tc_ingress" };
    let attached = format!("interface=\"{}\",program=\"{program}\"", pair.a_if);
    assert_eq!(
        sample(
            &scrape,
            "network_probe_datapath_programs_attached",
            &attached
        ),
        Some(1.0),
        "{scrape}"
    );

    // A raw ICMP socket opened after the drop (the namespace's ping_group_range is "1 0").
    let range = pair.exec(&pair.a, "sysctl", &["-n", "net.ipv4.ping_group_range"]);
    assert_eq!(range.split_whitespace().collect::<Vec<_>>(), ["1", "0"]);
    let peer = dotted(pair.b_addr);
    let path = format!("/probe?module=ping&target={peer}&debug=true");
    let (status, body) = daemon.get(&path).unwrap();
    assert_eq!(status, 200, "{body}");
    let received = format!("ip=\"{peer}\"");
    wait_for("a ping reply over the raw socket", || {
        let (_, body) = daemon
            .get(&format!("/probe?module=ping&target={peer}"))
            .unwrap();
        sample(&body, "icmp_probe_packets_recv_total", &received).unwrap_or(0.0) >= 1.0
    });
    // The capability sets of the threads started since (if any) are the reduced ones too.
    for (caps, _) in thread_capabilities(daemon.child.id()) {
        assert_eq!(caps.effective, KEPT_AS_ROOT, "CapEff {caps:x?}");
    }

    // Re-attach after the drop: the interface is deleted and created again.
    pair.exec(&pair.a, "ip", &["link", "del", "npchurn0"]);
    wait_for("the programs gone with the interface", || {
        attached_programs(&pair.a, "npchurn0", TcAttachType::Egress).is_empty()
    });
    add_churn();
    wait_for("the programs attached to the new npchurn0", || {
        let ingress_ok = if xdp {
            has_xdp(&pair, "npchurn0")
        } else {
            attached_programs(&pair.a, "npchurn0", TcAttachType::Ingress) == ["tc_ingress"]
        };
        ingress_ok && attached_programs(&pair.a, "npchurn0", TcAttachType::Egress) == ["tc_egress"]
    });
    // The daemon saw it too (its per-interface map entries were prepared without CAP_BPF).
    let scrape = daemon.scrape();
    let churn = format!("interface=\"npchurn0\",program=\"{program}\"");
    assert_eq!(
        sample(&scrape, "network_probe_datapath_programs_attached", &churn),
        Some(1.0),
        "{scrape}"
    );
}

#[test]
fn a_non_root_daemon_keeps_only_net_admin_and_clears_ambient_and_inheritable() {
    let pair = VethPair::new();
    let daemon = Daemon::start_wrapped(
        &pair.a,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--bounding-set=-all,+bpf,+perfmon,+net_admin",
            "--inh-caps=-all,+bpf,+perfmon,+net_admin",
            "--ambient-caps=-all,+bpf,+perfmon,+net_admin",
        ],
        &["--interface", &pair.a_if],
    );
    for (caps, no_new_privs) in thread_capabilities(daemon.child.id()) {
        assert_eq!(caps.effective, NET_ADMIN, "CapEff {caps:x?}");
        assert_eq!(caps.permitted, NET_ADMIN, "CapPrm {caps:x?}");
        // Without CAP_SETPCAP the bounding set stays as setpriv left it.
        assert_eq!(caps.bounding, THREE, "CapBnd {caps:x?}");
        assert_eq!(caps.inheritable, 0, "CapInh {caps:x?}");
        assert_eq!(caps.ambient, 0, "CapAmb {caps:x?}");
        assert_eq!(no_new_privs, "1");
    }
    let scrape = daemon.scrape();
    assert!(
        scrape.contains("network_probe_interface_packets_total"),
        "{scrape}"
    );
}
