//! `network-probe check`: a doctor that tells whether this host can run the daemon with the
//! given flags, one line per item (`OK`, `WARN` or `FAIL`, what was found, and for what is not
//! OK how to fix it), and exits 1 if anything FAILs.
//!
//! Items: effective capabilities, BTF, TCX, bpffs, a trial load of the embedded programs
//! (loaded and verified, attached nowhere), the interfaces to attach to, hardware timestamping
//! per interface, ICMP datagram and raw sockets, the Jool module and instances, and the listen
//! address. Each check reuses the code the daemon itself runs ([`preflight`], [`Datapath::load`],
//! [`rtnetlink`], the ping prober's timestamping ioctl, the Jool client, [`web::bind`]); only
//! the decisions that are new here (the line for each finding) live in this file, as pure
//! functions with unit tests.

use std::{fmt, fs, io, os::fd::AsRawFd as _, path::Path, time::Duration};

use crate::{
    cli::Cli,
    jool::client::{JoolClient, ReadError},
    kernel::datapath::{Datapath, DatapathConfig},
    kernel::drops::DropsStatus,
    kernel::preflight,
    kernel::privileges::{StatusCapabilities, bit, cap},
    kernel::rtnetlink,
    probe::ping::timestamps,
    web,
};

/// Where the BPF filesystem is expected.
pub const BPFFS_PATH: &str = "/sys/fs/bpf";
/// The Jool module's version file (present when `jool_common` is loaded).
pub const JOOL_VERSION_PATH: &str = crate::jool::client::MODULE_VERSION_PATH;

/// The verdict on one item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub status: Status,
    /// What was checked, e.g. `capability CAP_BPF`.
    pub item: String,
    /// What was found.
    pub detail: String,
    /// How to fix it (for WARN and FAIL).
    pub fix: Option<String>,
}

impl Finding {
    fn ok(item: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding {
            status: Status::Ok,
            item: item.into(),
            detail: detail.into(),
            fix: None,
        }
    }

    fn not_ok(
        status: Status,
        item: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            status,
            item: item.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        write!(f, "{status:<4} {}: {}", self.item, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "; fix: {fix}")?;
        }
        Ok(())
    }
}

/// Runs every check, prints one line each and a summary; returns the exit code (0 when
/// nothing FAILs, else 1).
pub fn run(cli: &Cli) -> u8 {
    let findings = findings(cli);
    for finding in &findings {
        println!("{finding}");
    }
    let count = |status| findings.iter().filter(|f| f.status == status).count();
    let failed = count(Status::Fail);
    println!(
        "{} OK, {} WARN, {failed} FAIL",
        count(Status::Ok),
        count(Status::Warn)
    );
    u8::from(failed > 0)
}

/// Every finding, in report order.
pub fn findings(cli: &Cli) -> Vec<Finding> {
    let mut findings = Vec::new();
    let effective = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| StatusCapabilities::parse(&status))
        .map(|caps| caps.effective);
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    match effective {
        Some(effective) => findings.extend(capability_findings(effective, uid)),
        None => findings.push(Finding::not_ok(
            Status::Fail,
            "capabilities",
            "cannot read CapEff from /proc/self/status",
            "mount /proc",
        )),
    }
    findings.extend(kernel_findings(
        &preflight::kernel_release(),
        Path::new(preflight::KERNEL_BTF_PATH).exists(),
    ));
    findings.push(bpffs_finding(
        &fs::read_to_string("/proc/mounts").unwrap_or_default(),
        &cli.pin_path,
    ));
    findings.extend(trial_load(cli));
    findings.extend(interface_findings(cli));
    findings.extend(socket_findings());
    findings.extend(jool_findings(cli));
    findings.push(match web::bind(&cli.listen_address) {
        Ok(listener) => Finding::ok(
            "listen address",
            format!(
                "{} can be bound ({})",
                cli.listen_address,
                listener
                    .local_addr()
                    .map_or_else(|err| err.to_string(), |a| a.to_string())
            ),
        ),
        Err(err) => Finding::not_ok(
            Status::Fail,
            "listen address",
            err.to_string(),
            "free the port or choose another with --web.listen-address",
        ),
    });
    findings
}

/// How to grant what the daemon needs, for every capability line.
const GRANT: &str = "run as root, or `setcap cap_bpf,cap_perfmon,cap_net_admin,cap_net_raw=ep \
                     <binary>`, or AmbientCapabilities=CAP_BPF CAP_PERFMON CAP_NET_ADMIN \
                     CAP_NET_RAW in the systemd unit";

/// One line per capability: CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN are required (CAP_SYS_ADMIN
/// stands in for the first two), CAP_NET_RAW only for raw-socket ping.
pub fn capability_findings(effective: u64, uid: u32) -> Vec<Finding> {
    let has = |number: u32| effective & bit(number) != 0;
    let mut findings = Vec::new();
    for (number, name, purpose) in [
        (cap::BPF, "CAP_BPF", "loading and attaching the programs"),
        (
            cap::PERFMON,
            "CAP_PERFMON",
            "verifying the flow accounting without Spectre v1 restrictions",
        ),
        (cap::NET_ADMIN, "CAP_NET_ADMIN", "attaching TCX/XDP links"),
    ] {
        let item = format!("capability {name}");
        let substitute = number != cap::NET_ADMIN && has(cap::SYS_ADMIN);
        findings.push(if has(number) {
            Finding::ok(item, format!("effective (for {purpose})"))
        } else if substitute {
            Finding::ok(item, "not held, CAP_SYS_ADMIN stands in for it")
        } else {
            Finding::not_ok(
                Status::Fail,
                item,
                format!("missing from the effective set of uid {uid} (needed for {purpose})"),
                GRANT,
            )
        });
    }
    findings.push(if has(cap::NET_RAW) {
        Finding::ok(
            "capability CAP_NET_RAW",
            "effective (raw ICMP and TCP SYN ping)",
        )
    } else {
        Finding::not_ok(
            Status::Warn,
            "capability CAP_NET_RAW",
            format!(
                "missing from the effective set of uid {uid}: TCP SYN ping and raw ICMP ping fail"
            ),
            "grant CAP_NET_RAW like the others if the ping prober is used",
        )
    });
    findings
}

/// BTF and TCX, decided by the daemon's own preflight rules.
pub fn kernel_findings(release: &str, has_btf: bool) -> Vec<Finding> {
    let btf = if has_btf {
        Finding::ok("BTF", format!("{} present", preflight::KERNEL_BTF_PATH))
    } else {
        Finding::not_ok(
            Status::Fail,
            "BTF",
            format!("{} is missing", preflight::KERNEL_BTF_PATH),
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        )
    };
    // BTF is judged above; ask preflight about the version alone.
    let tcx = match preflight::check_kernel_features(release, true) {
        Ok(support) if support.tcx => {
            Finding::ok("TCX", format!("kernel {release} (6.6 or newer)"))
        }
        Ok(_) => Finding::not_ok(
            Status::Warn,
            "TCX",
            format!(
                "kernel {release} predates TCX (6.6): TC programs are attached as cls_bpf filters \
                 on a clsact qdisc instead"
            ),
            "nothing to do; a kernel 6.6 or newer uses TCX links, which die with the process",
        ),
        Err(err) => Finding::not_ok(
            Status::Fail,
            "kernel",
            err.to_string(),
            "boot a kernel 5.12 or newer (6.6 or newer for TCX)",
        ),
    };
    vec![btf, tcx]
}

/// Whether `/proc/mounts` text lists a `bpf` filesystem at [`BPFFS_PATH`].
pub fn bpffs_mounted(mounts: &str) -> bool {
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_device, mount_point, kind) = (fields.next(), fields.next(), fields.next());
        mount_point == Some(BPFFS_PATH) && kind == Some("bpf")
    })
}

/// bpffs: the daemon pins nothing, so its absence is only a warning (bpftool needs it).
pub fn bpffs_finding(mounts: &str, pin_path: &str) -> Finding {
    if !pin_path.is_empty() {
        return match crate::kernel::pinning::check_location(Path::new(pin_path)) {
            Ok(()) => Finding::ok(
                "bpffs",
                format!("--datapath.pin-path {pin_path} is on bpffs: counters survive restarts"),
            ),
            Err(err) => Finding::not_ok(
                Status::Fail,
                "bpffs",
                err.to_string(),
                format!(
                    "mount -t bpf bpf {BPFFS_PATH}, or run with --datapath.pin-path=\"\" \
                     (counters then restart from zero with the daemon)"
                ),
            ),
        };
    }
    if bpffs_mounted(mounts) {
        Finding::ok(
            "bpffs",
            format!("mounted at {BPFFS_PATH} (not used: --datapath.pin-path=\"\")"),
        )
    } else {
        Finding::not_ok(
            Status::Warn,
            "bpffs",
            format!(
                "not mounted at {BPFFS_PATH} (with --datapath.pin-path=\"\" the daemon runs \
                 without it; bpftool and other BPF tools need it)"
            ),
            format!("mount -t bpf bpf {BPFFS_PATH}"),
        )
    }
}

/// Loads and verifies the embedded programs for `--datapath.ingress`, attaches nothing, and
/// unloads them again; then the drop reasons line (see [`drops_finding`]).
fn trial_load(cli: &Cli) -> Vec<Finding> {
    let item = "eBPF programs";
    // Pins nothing: a trial must not touch the running daemon's pinned maps.
    let config = DatapathConfig {
        pin_path: None,
        ..cli.datapath_config(false)
    };
    match Datapath::load(config) {
        Ok(datapath) => {
            let drops = datapath.drops_status();
            drop(datapath);
            vec![
                Finding::ok(
                    item,
                    format!(
                        "loaded and verified for --datapath.ingress {} (attached nowhere)",
                        clap::ValueEnum::to_possible_value(&cli.ingress)
                            .map_or_else(|| format!("{:?}", cli.ingress), |v| v.get_name().into())
                    ),
                ),
                drops_finding(&drops),
            ]
        }
        Err(err) => vec![Finding::not_ok(
            Status::Fail,
            item,
            format!("trial load failed: {err}"),
            "fix the capability and kernel lines above; the verifier log is printed with \
             --log.level debug",
        )],
    }
}

/// Whether drop reasons are available (the kfree_skb program verified, the reason enum in the
/// kernel's BTF), and what the daemon does without them.
pub fn drops_finding(status: &DropsStatus) -> Finding {
    let item = "drop reasons";
    match status {
        DropsStatus::Counting { reasons: 0 } => Finding::not_ok(
            Status::Warn,
            item,
            "tp_btf/kfree_skb verified, but the tracepoint passes no reason (Linux < 5.17): \
             network_probe_drops_total counts every drop as reason=\"not_specified\"",
            "run Linux 5.17 or later for reasons",
        ),
        DropsStatus::Counting { reasons } => Finding::ok(
            item,
            format!(
                "tp_btf/kfree_skb verified; {reasons} reasons named by the kernel's BTF (enum \
                 skb_drop_reason): network_probe_drops_total is exported"
            ),
        ),
        DropsStatus::Off => Finding::ok(
            item,
            "off (--datapath.drops off): no network_probe_drops_total",
        ),
        DropsStatus::Unavailable(why) => Finding::not_ok(
            Status::Warn,
            item,
            format!(
                "unavailable: {why}; the daemon runs without network_probe_drops_total \
                 (interface counters and flows are unaffected)"
            ),
            "drop reasons need kernel BTF (CONFIG_DEBUG_INFO_BTF) and Linux 5.5 or later, \
             reasons 5.17 or later",
        ),
    }
}

/// The interfaces the daemon would attach to: each must exist; one that is down is a warning
/// (the programs attach, traffic is counted once it is up). Hardware timestamping per
/// interface follows each.
fn interface_findings(cli: &Cli) -> Vec<Finding> {
    let mut names = if cli.interfaces.is_empty() {
        rtnetlink::default_route_interfaces()
    } else {
        Ok(cli.interfaces.clone())
    };
    if let Ok(names) = &mut names {
        names.sort();
        names.dedup();
    }
    let names = match names {
        Ok(names) => names,
        Err(err) => {
            return vec![Finding::not_ok(
                Status::Fail,
                "interfaces",
                err.to_string(),
                "name the interfaces with --interface",
            )];
        }
    };
    let mut findings = Vec::new();
    for name in names {
        let item = format!("interface {name}");
        match interface_up(&name) {
            Err(_) => findings.push(Finding::not_ok(
                Status::Fail,
                item,
                format!("{name:?} does not exist"),
                "name an existing interface with --interface (list them with `ip link`)",
            )),
            Ok(false) => findings.push(Finding::not_ok(
                Status::Warn,
                item,
                "exists but is down (programs attach; traffic is counted once it is up)",
                format!("ip link set {name} up"),
            )),
            Ok(true) => {
                findings.push(Finding::ok(item, "exists and is up"));
                findings.push(timestamping_finding(
                    &name,
                    timestamps::ts_info(&name).map_err(|err| err.to_string()),
                    cli.ping.hard,
                ));
            }
        }
    }
    findings
}

/// Hardware timestamping of `interface` from its `ETHTOOL_GET_TS_INFO` answer: a warning only
/// when `--ping.hard` asks for it and the interface cannot.
pub fn timestamping_finding(
    interface: &str,
    info: Result<timestamps::EthtoolTsInfo, String>,
    hard_requested: bool,
) -> Finding {
    let item = format!("hardware timestamps {interface}");
    let missing = info.and_then(|info| timestamps::check_hardware_capabilities(&info));
    match (missing, hard_requested) {
        (Ok(()), _) => Finding::ok(item, "supported (--ping.hard uses them)"),
        (Err(reason), false) => Finding::ok(
            item,
            format!("not supported ({reason}); ping uses software timestamps"),
        ),
        (Err(reason), true) => Finding::not_ok(
            Status::Warn,
            item,
            format!("not supported ({reason}): --ping.hard falls back to software timestamps"),
            "bind ping to a NIC with PTP hardware stamping (--ping.interface4/6), or drop \
             --ping.hard",
        ),
    }
}

/// Whether `interface` is administratively up (`SIOCGIFFLAGS`); an error if it does not exist.
fn interface_up(interface: &str) -> io::Result<bool> {
    #[repr(C)]
    struct IfreqFlags {
        name: [libc::c_char; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    if interface.is_empty() || interface.len() >= libc::IFNAMSIZ || interface.contains('\0') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad name"));
    }
    let socket =
        std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
    let mut request = IfreqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    for (slot, byte) in request.name.iter_mut().zip(interface.bytes()) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: a valid socket and an ifreq of the size SIOCGIFFLAGS reads and writes.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut request) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(request.flags & libc::IFF_UP as libc::c_short != 0)
}

/// `(low, high)` of `net.ipv4.ping_group_range`.
pub fn parse_group_range(text: &str) -> Option<(u32, u32)> {
    let mut fields = text.split_whitespace();
    let low = fields.next()?.parse().ok()?;
    let high = fields.next()?.parse().ok()?;
    Some((low, high))
}

/// The first of `gids` inside the range, if any (the kernel admits a process whose group or
/// any supplementary group is in it).
pub fn admitted_gid(range: (u32, u32), gids: &[u32]) -> Option<u32> {
    gids.iter()
        .copied()
        .find(|gid| range.0 <= *gid && *gid <= range.1)
}

/// Tries `socket(AF_INET, kind, protocol)`; the error is the kernel's.
fn try_socket(kind: libc::c_int, protocol: libc::c_int) -> io::Result<()> {
    // SAFETY: socket takes integers; a returned descriptor is closed at once.
    let fd = unsafe { libc::socket(libc::AF_INET, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket and is ours.
    unsafe { libc::close(fd) };
    Ok(())
}

/// Our effective group and supplementary groups.
fn our_gids() -> Vec<u32> {
    // SAFETY: getegid cannot fail.
    let mut gids = vec![unsafe { libc::getegid() }];
    let mut groups = [0 as libc::gid_t; 256];
    // SAFETY: the buffer holds 256 entries, as passed.
    let count = unsafe { libc::getgroups(groups.len() as libc::c_int, groups.as_mut_ptr()) };
    if count > 0 {
        gids.extend_from_slice(&groups[..count as usize]);
    }
    gids
}

/// ICMP datagram sockets (net.ipv4.ping_group_range against our groups, then a real socket)
/// and raw sockets (a real socket).
fn socket_findings() -> Vec<Finding> {
    let range_text = fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").unwrap_or_default();
    let gids = our_gids();
    let datagram = match (
        parse_group_range(&range_text),
        try_socket(libc::SOCK_DGRAM, libc::IPPROTO_ICMP),
    ) {
        (Some(range), Ok(())) => Finding::ok(
            "ICMP datagram sockets",
            format!(
                "allowed (gid {} in net.ipv4.ping_group_range {} {})",
                admitted_gid(range, &gids).unwrap_or(gids[0]),
                range.0,
                range.1
            ),
        ),
        (range, result) => Finding::not_ok(
            Status::Warn,
            "ICMP datagram sockets",
            format!(
                "not allowed ({}; net.ipv4.ping_group_range {:?} vs groups {gids:?}): ICMP ping \
                 needs raw sockets",
                result.err().map_or_else(|| "?".into(), |e| e.to_string()),
                range.map_or_else(
                    || range_text.trim().to_string(),
                    |r| format!("{} {}", r.0, r.1)
                )
            ),
            format!("sysctl -w net.ipv4.ping_group_range=\"{0} {0}\"", gids[0]),
        ),
    };
    let raw = match try_socket(libc::SOCK_RAW, libc::IPPROTO_ICMP) {
        Ok(()) => Finding::ok("raw sockets", "allowed (TCP SYN ping, raw ICMP ping)"),
        Err(err) => Finding::not_ok(
            Status::Warn,
            "raw sockets",
            format!("not allowed ({err}): TCP SYN ping fails"),
            "grant CAP_NET_RAW",
        ),
    };
    vec![datagram, raw]
}

/// The Jool module and the configured instances (skipped with `--jool.disable`).
fn jool_findings(cli: &Cli) -> Vec<Finding> {
    if cli.jool.disable {
        return vec![Finding::ok("Jool", "--jool.disable: not read")];
    }
    let version = match fs::read_to_string(JOOL_VERSION_PATH) {
        Ok(version) => version.trim().to_string(),
        Err(_) => {
            return vec![Finding::not_ok(
                Status::Warn,
                "Jool module",
                format!(
                    "jool_common is not loaded ({JOOL_VERSION_PATH} missing): jool_up is 0 \
                     with reason module_missing"
                ),
                "modprobe jool (or jool_siit), or pass --jool.disable if Jool is not used",
            )];
        }
    };
    let mut findings = vec![Finding::ok(
        "Jool module",
        format!("jool_common {version} loaded"),
    )];
    let mut client = match JoolClient::connect(Duration::from_secs(1)) {
        Ok(client) => client,
        Err(err) => {
            findings.push(jool_error_finding("Jool", &err));
            return findings;
        }
    };
    for instance in cli.jool.configured() {
        let item = format!("Jool instance {instance}");
        findings.push(match client.read_stats(&instance.name, instance.xlator) {
            Ok(stats) => Finding::ok(item, format!("{} statistics read", stats.values.len())),
            Err(err) => jool_error_finding(&item, &err),
        });
    }
    findings
}

fn jool_error_finding(item: &str, err: &ReadError) -> Finding {
    let fix = match err {
        ReadError::ModuleMissing(_) => "modprobe jool / jool_siit",
        ReadError::InstanceMissing(_) => "`jool instance add ...`, or fix --jool.instance",
        ReadError::VersionRefused(_) => "upgrade Jool to 4.1.5 or newer",
        ReadError::PermissionDenied(_) => "grant CAP_NET_ADMIN or name the instances",
        ReadError::Netlink(_) => "see the log with --log.level debug",
    };
    Finding::not_ok(Status::Warn, item, format!("{} ({err})", err.reason()), fix)
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: u64 = bit(cap::BPF) | bit(cap::PERFMON) | bit(cap::NET_ADMIN);

    fn statuses(findings: &[Finding]) -> Vec<Status> {
        findings.iter().map(|f| f.status).collect()
    }

    #[test]
    fn capabilities_fail_with_the_fix_and_net_raw_only_warns() {
        let all = capability_findings(THREE | bit(cap::NET_RAW), 0);
        assert_eq!(statuses(&all), [Status::Ok; 4]);
        let no_raw = capability_findings(THREE, 65534);
        assert_eq!(no_raw[3].status, Status::Warn);
        let no_bpf = capability_findings(THREE & !bit(cap::BPF), 0);
        assert_eq!(no_bpf[0].status, Status::Fail);
        let line = no_bpf[0].to_string();
        assert!(
            line.starts_with("FAIL capability CAP_BPF: missing from the effective set of uid 0"),
            "{line}"
        );
        assert!(
            line.contains("; fix: run as root, or `setcap cap_bpf,"),
            "{line}"
        );
        // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, not for CAP_NET_ADMIN.
        let admin = capability_findings(bit(cap::SYS_ADMIN), 0);
        assert_eq!(
            statuses(&admin),
            [Status::Ok, Status::Ok, Status::Fail, Status::Warn]
        );
    }

    #[test]
    fn kernel_lines_follow_preflight() {
        let ok = kernel_findings("6.18.0", true);
        assert_eq!(statuses(&ok), [Status::Ok, Status::Ok]);
        let debian12 = kernel_findings("6.1.0-37-amd64", true);
        assert_eq!(statuses(&debian12), [Status::Ok, Status::Warn]);
        assert!(
            debian12[1].detail.contains("cls_bpf"),
            "{}",
            debian12[1].detail
        );
        let ancient = kernel_findings("5.4.0", false);
        assert_eq!(statuses(&ancient), [Status::Fail, Status::Fail]);
        assert!(ancient[1].detail.contains("5.12"), "{}", ancient[1].detail);
    }

    #[test]
    fn bpffs_is_found_in_proc_mounts() {
        let mounts = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,nosuid 0 0\n";
        assert!(bpffs_mounted(mounts));
        assert_eq!(bpffs_finding(mounts, "").status, Status::Ok);
        assert!(!bpffs_mounted("none /sys/fs/bpf tmpfs rw 0 0\n"));
        assert!(!bpffs_mounted("bpf /run/bpf bpf rw 0 0\n"));
        let missing = bpffs_finding("", "");
        assert_eq!(missing.status, Status::Warn);
        assert_eq!(missing.fix.as_deref(), Some("mount -t bpf bpf /sys/fs/bpf"));
        // /tmp is not bpffs.
        let needed = bpffs_finding("", "/tmp/network-probe");
        assert_eq!(needed.status, Status::Fail);
        assert!(
            needed.detail.contains("is not on bpffs"),
            "{}",
            needed.detail
        );
        assert!(needed.fix.unwrap().contains("--datapath.pin-path=\"\""));
    }

    #[test]
    fn ping_group_range_admits_a_group_in_it() {
        assert_eq!(
            parse_group_range("0\t2147483647\n"),
            Some((0, 2_147_483_647))
        );
        assert_eq!(parse_group_range("1\t0\n"), Some((1, 0)));
        assert_eq!(parse_group_range("x"), None);
        assert_eq!(admitted_gid((0, 2_147_483_647), &[65534]), Some(65534));
        // The kernel's default "1 0" admits nobody.
        assert_eq!(admitted_gid((1, 0), &[0, 1, 65534]), None);
        assert_eq!(admitted_gid((100, 200), &[5, 150]), Some(150));
    }

    #[test]
    fn check_is_a_subcommand_and_no_subcommand_runs_the_daemon() {
        use clap::Parser as _;
        let daemon = Cli::try_parse_from(["network-probe", "--interface", "eth0"]).unwrap();
        assert!(daemon.command.is_none());
        // The datapath flags may follow the subcommand; the others go before it.
        let cli = Cli::try_parse_from([
            "network-probe",
            "--ping.hard",
            "check",
            "--interface",
            "eth1",
            "--web.listen-address",
            "127.0.0.1:1",
            "--datapath.ingress",
            "xdp-generic",
        ])
        .unwrap();
        assert!(matches!(cli.command, Some(crate::cli::Command::Check)));
        assert_eq!(cli.interfaces, ["eth1"]);
        assert_eq!(cli.listen_address, "127.0.0.1:1");
        assert_eq!(
            cli.ingress,
            crate::kernel::datapath::IngressHook::XdpGeneric
        );
        assert!(cli.ping.hard);
        let before = Cli::try_parse_from(["network-probe", "--interface", "eth2", "check"]);
        assert_eq!(before.unwrap().interfaces, ["eth2"]);
        assert!(Cli::try_parse_from(["network-probe", "check", "--ping.hard"]).is_err());
    }

    #[test]
    fn timestamping_warns_only_when_asked_for() {
        let none = timestamps::EthtoolTsInfo::default();
        assert_eq!(
            timestamping_finding("eth0", Ok(none), false).status,
            Status::Ok
        );
        let warn = timestamping_finding("eth0", Ok(none), true);
        assert_eq!(warn.status, Status::Warn);
        assert!(
            warn.detail.contains("no hardware-transmit"),
            "{}",
            warn.detail
        );
        let error = timestamping_finding("eth0", Err("ENODEV".into()), true);
        assert!(error.detail.contains("ENODEV"), "{}", error.detail);
    }
}
