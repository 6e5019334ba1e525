//! Checks run before the daemon touches anything: does this process hold the capabilities the
//! datapath needs, is the kernel recent enough (5.12) and does it offer BTF? Each failure is one
//! actionable line. Also says whether the kernel has TCX (6.6), which decides how TC programs
//! are attached.

use std::{fs, path::Path};

use crate::error::{Error, Result};

/// Capability numbers from `linux/capability.h`.
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Where the kernel publishes its own BTF.
pub const KERNEL_BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

/// Verifies that the effective capability set can load and attach the programs:
/// CAP_BPF, CAP_PERFMON (or CAP_SYS_ADMIN, which implies both) and CAP_NET_ADMIN. Without
/// CAP_PERFMON the verifier applies Spectre v1 restrictions that reject the flow accounting's
/// indexed counter updates.
pub fn check_capabilities() -> Result<()> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|err| Error::Other(format!("cannot read /proc/self/status: {err}")))?;
    let effective = parse_cap_eff(&status)
        .ok_or_else(|| Error::Other("no CapEff line in /proc/self/status".into()))?;
    missing_capability(effective).map_or(Ok(()), |capability| {
        Err(Error::MissingCapability {
            capability,
            // SAFETY: getuid cannot fail.
            uid: unsafe { libc::getuid() },
        })
    })
}

/// Reads the effective capability mask from the text of `/proc/<pid>/status`.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// The first capability the datapath needs that `effective` lacks.
pub fn missing_capability(effective: u64) -> Option<&'static str> {
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        return Some("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        return Some("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        return Some("CAP_NET_ADMIN");
    }
    None
}

/// What the running kernel offers the datapath.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSupport {
    /// TC programs can be attached as TCX links (Linux 6.6+); below that the datapath uses
    /// classic cls_bpf filters on a clsact qdisc, created over netlink.
    pub tcx: bool,
}

/// Oldest kernel the datapath supports: CAP_BPF and CAP_PERFMON exist from Linux 5.8, the
/// coarse clock helper (`bpf_ktime_get_coarse_ns`) the programs read from 5.11, the atomic
/// compare-and-exchange with which they claim a flow slot from 5.12.
pub const MINIMUM_KERNEL: (u32, u32) = (5, 12);
/// First kernel with TCX.
pub const TCX_KERNEL: (u32, u32) = (6, 6);

/// Verifies the kernel publishes BTF and is recent enough (Linux 5.12), and says whether it
/// has TCX.
pub fn check_kernel() -> Result<KernelSupport> {
    let release = kernel_release();
    check_kernel_features(&release, Path::new(KERNEL_BTF_PATH).exists())
}

/// The pure part of [`check_kernel`]: decides from a release string and BTF presence.
pub fn check_kernel_features(release: &str, has_btf: bool) -> Result<KernelSupport> {
    if !has_btf {
        return Err(Error::KernelFeature {
            release: release.to_string(),
            feature: "BTF (/sys/kernel/btf/vmlinux is missing)",
            hint: "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        });
    }
    match parse_release(release) {
        Some(version) if version >= MINIMUM_KERNEL => Ok(KernelSupport {
            tcx: version >= TCX_KERNEL,
        }),
        Some(_) => Err(Error::KernelFeature {
            release: release.to_string(),
            feature: "the BPF features the programs use (Linux 5.12 or newer)",
            hint: "upgrade the kernel to 5.12 or newer",
        }),
        None => Err(Error::KernelFeature {
            release: release.to_string(),
            feature: "a parseable version, so its BPF support cannot be established",
            hint: "report this release string as a bug",
        }),
    }
}

/// `(major, minor)` of a kernel release such as `6.18.44-fc-v669`.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain data; uname fills it or fails.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "unknown".into();
    }
    // SAFETY: uname NUL-terminates release.
    unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cap_eff() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t0\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }

    #[test]
    fn names_the_missing_capability() {
        let all = u64::MAX;
        assert_eq!(missing_capability(all), None);
        assert_eq!(missing_capability(0), Some("CAP_BPF"));
        assert_eq!(missing_capability(1 << CAP_BPF), Some("CAP_PERFMON"));
        let bpf_perfmon = (1 << CAP_BPF) | (1 << CAP_PERFMON);
        assert_eq!(missing_capability(bpf_perfmon), Some("CAP_NET_ADMIN"));
        assert_eq!(missing_capability(bpf_perfmon | (1 << CAP_NET_ADMIN)), None);
        assert_eq!(
            missing_capability((1 << CAP_SYS_ADMIN) | (1 << CAP_NET_ADMIN)),
            None
        );
    }

    // The host kernel has BTF and TCX, so the other cases are shown on the pure decision
    // function (the Debian 6.1 guest runs the real thing: see docs/kernels.md).
    #[test]
    fn old_kernels_and_missing_btf_are_named_and_tcx_is_detected() {
        let err = check_kernel_features("6.18.0", false).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit_code::KERNEL);
        assert!(err.to_string().contains("lacks BTF"), "{err}");
        let err = check_kernel_features("5.11.0-33-amd64", true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel 5.11.0-33-amd64 lacks the BPF features the programs use (Linux 5.12 or \
             newer): upgrade the kernel to 5.12 or newer"
        );
        let no_tcx = KernelSupport { tcx: false };
        let tcx = KernelSupport { tcx: true };
        assert_eq!(
            check_kernel_features("5.14.0-503.el9.x86_64", true).unwrap(),
            no_tcx
        );
        assert_eq!(
            check_kernel_features("5.15.0-126-generic", true).unwrap(),
            no_tcx
        );
        assert_eq!(
            check_kernel_features("6.1.0-37-amd64", true).unwrap(),
            no_tcx
        );
        assert_eq!(check_kernel_features("6.6.0", true).unwrap(), tcx);
        assert_eq!(check_kernel_features("6.18.44-fc-v669", true).unwrap(), tcx);
        assert!(check_kernel_features("garbage", true).is_err());
    }

    #[test]
    fn parses_releases() {
        assert_eq!(parse_release("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_release("5.15.0"), Some((5, 15)));
        assert_eq!(parse_release("7"), None);
        assert_eq!(parse_release(""), None);
    }
}
