//! Three namespaces in a line, for tests of forwarded traffic: a sender (`s`), a router (`r`)
//! and a far host (`f`), joined by two veth pairs (`s_if`/`r_s` and `r_f`/`f_if`); IPv4
//! 10.N.1.0/24 and 10.N.2.0/24, IPv6 fdN:1::/64 and fdN:2::/64 (N chosen by the suite, the
//! router .2 / ::2 on both links, the hosts .1 / ::1), forwarding on in the router and the hosts'
//! default routes through it. Removed on drop. Used by the path-MTU and passive-RTT suites.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::{isolation, sh};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// sender (`s`) -- `s_if`/`r_s` -- router (`r`) -- `r_f`/`f_if` -- far host (`f`).
pub struct Routed {
    pub s: String,
    pub r: String,
    pub f: String,
    pub s_if: String,
    pub r_s: String,
    pub r_f: String,
    pub f_if: String,
    _isolation: isolation::Shared,
}

impl Routed {
    /// The three namespaces, names tagged with `suite` (a letter or two: interface names have
    /// at most 15 bytes) and this process; subnets 10.`subnet`.1-2.0/24 and fd`subnet`:1-2::/64;
    /// the router's link towards the far host with an MTU of `far_mtu`, every other link 1500.
    pub fn new(suite: &str, subnet: u8, far_mtu: u32) -> Routed {
        let isolation = isolation::shared();
        let tag = format!(
            "{}-{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let routed = Routed {
            s: format!("np-{suite}{tag}-s"),
            r: format!("np-{suite}{tag}-r"),
            f: format!("np-{suite}{tag}-f"),
            s_if: format!("np{suite}ss{tag}"),
            r_s: format!("np{suite}rs{tag}"),
            r_f: format!("np{suite}rf{tag}"),
            f_if: format!("np{suite}ff{tag}"),
            _isolation: isolation,
        };
        for ns in [&routed.s, &routed.r, &routed.f] {
            sh("ip", &["netns", "add", ns]);
            routed.exec(ns, "ip", &["link", "set", "lo", "up"]);
        }
        for (near, near_if, far, far_if) in [
            (&routed.s, &routed.s_if, &routed.r, &routed.r_s),
            (&routed.r, &routed.r_f, &routed.f, &routed.f_if),
        ] {
            sh(
                "ip",
                &[
                    "link", "add", near_if, "netns", near, "type", "veth", "peer", "name", far_if,
                    "netns", far,
                ],
            );
        }
        let address = |link: u8, host: u8| {
            (
                format!("10.{subnet}.{link}.{host}/24"),
                format!("fd{subnet}:{link}::{host}/64"),
            )
        };
        let links = [
            (&routed.s, &routed.s_if, address(1, 1), 1500),
            (&routed.r, &routed.r_s, address(1, 2), 1500),
            (&routed.r, &routed.r_f, address(2, 2), far_mtu),
            (&routed.f, &routed.f_if, address(2, 1), 1500),
        ];
        for (ns, ifname, (v4, v6), mtu) in links {
            routed.exec(ns, "ip", &["link", "set", ifname, "mtu", &mtu.to_string()]);
            routed.exec(ns, "ip", &["addr", "add", &v4, "dev", ifname]);
            routed.exec(
                ns,
                "ip",
                &["-6", "addr", "add", &v6, "dev", ifname, "nodad"],
            );
            routed.exec(ns, "ip", &["link", "set", ifname, "up"]);
        }
        routed.exec(&routed.r, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        routed.exec(
            &routed.r,
            "sysctl",
            &["-qw", "net.ipv6.conf.all.forwarding=1"],
        );
        for (ns, link) in [(&routed.s, 1), (&routed.f, 2)] {
            let via4 = format!("10.{subnet}.{link}.2");
            let via6 = format!("fd{subnet}:{link}::2");
            routed.exec(ns, "ip", &["route", "add", "default", "via", &via4]);
            routed.exec(ns, "ip", &["-6", "route", "add", "default", "via", &via6]);
        }
        routed
    }

    /// Runs `program` with `args` in the namespace `ns`, its standard output returned.
    pub fn exec(&self, ns: &str, program: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", ns, program];
        full.extend_from_slice(args);
        sh("ip", &full)
    }
}

impl Drop for Routed {
    fn drop(&mut self) {
        for ns in [&self.s, &self.r, &self.f] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
    }
}
