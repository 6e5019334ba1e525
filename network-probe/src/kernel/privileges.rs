//! Least privilege after start-up: once the programs are loaded and attached, the listener is
//! bound and the link-event socket is subscribed, the daemon gives up every capability it will
//! not use again, in every set (effective, permitted, inheritable, ambient, bounding), and sets
//! `PR_SET_NO_NEW_PRIVS`, so neither this process nor anything it could execute gets them back.
//!
//! What stays ([`RUNTIME_CAPABILITIES`], each only if the process held it at start):
//! - `CAP_NET_ADMIN`: an interface that is deleted and created again (link events) gets the
//!   programs loaded at start attached anew. That is a TCX (or XDP) link creation on the new
//!   device, which the kernel allows with CAP_NET_ADMIN; the program and map file descriptors
//!   are already open, and since Linux 6.5 (we require 6.6 for TCX) operations on them need no
//!   CAP_BPF: only creating maps and loading programs do, and both happen before the drop.
//!   CAP_PERFMON only matters to the verifier at load time. tests/integration/privileges.rs re-attaches
//!   (TC and XDP) and reads and trims the maps with exactly this set. CAP_NET_ADMIN also serves
//!   `--jool.all-instances` (the Jool instance listing) and `--ping.hard` (`SIOCSHWTSTAMP`).
//! - `CAP_NET_RAW`: the ping prober opens its raw ICMP and TCP sockets on the first probe of
//!   each address family (`probe/ping.rs`, `Ping::driver`), long after start-up; opening them
//!   eagerly would open sockets for families and interfaces nobody probes, so it is kept.
//!
//! Everything else goes: CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN (done with at start),
//! CAP_NET_BIND_SERVICE (the listener is bound), CAP_DAC_OVERRIDE, CAP_SETUID, CAP_SETPCAP, ...
//!
//! Capabilities are per thread in Linux: the drop must run while the process has one thread,
//! which [`drop_to_runtime_set`] checks; threads created later inherit the reduced sets.

use std::{fs, io};

/// Capability numbers from `linux/capability.h`.
pub mod cap {
    pub const SETPCAP: u32 = 8;
    pub const NET_BIND_SERVICE: u32 = 10;
    pub const NET_ADMIN: u32 = 12;
    pub const NET_RAW: u32 = 13;
    pub const SYS_ADMIN: u32 = 21;
    pub const PERFMON: u32 = 38;
    pub const BPF: u32 = 39;
}

/// Capabilities the running daemon still needs, with the reason (logged and documented).
pub const RUNTIME_CAPABILITIES: &[(u32, &str)] = &[
    (
        cap::NET_ADMIN,
        "attach the loaded programs to interfaces that come back; Jool listing; SIOCSHWTSTAMP",
    ),
    (
        cap::NET_RAW,
        "raw ICMP/TCP sockets the ping prober opens on its first probe",
    ),
];

/// Names of capabilities 0 to 40, as in `capabilities(7)`.
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The bit of capability `number` in a 64-bit mask.
pub const fn bit(number: u32) -> u64 {
    1u64 << number
}

/// The capabilities to keep, given the permitted set at start: those of
/// [`RUNTIME_CAPABILITIES`] the process holds. Never more than `permitted`.
pub fn kept_mask(permitted: u64) -> u64 {
    let wanted = RUNTIME_CAPABILITIES
        .iter()
        .fold(0, |mask, (number, _)| mask | bit(*number));
    permitted & wanted
}

/// `CAP_X` names of the bits of `mask`, ascending (`cap_N` for numbers this table lacks).
pub fn names(mask: u64) -> Vec<String> {
    (0..64)
        .filter(|number| mask & bit(*number) != 0)
        .map(|number| {
            NAMES
                .get(number as usize)
                .map_or_else(|| format!("cap_{number}"), |name| name.to_string())
        })
        .collect()
}

/// The capability sets of a `/proc/<pid>/status` text (`CapInh`, `CapPrm`, `CapEff`,
/// `CapBnd`, `CapAmb`), None for a missing or malformed line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatusCapabilities {
    pub inheritable: u64,
    pub permitted: u64,
    pub effective: u64,
    pub bounding: u64,
    pub ambient: u64,
}

impl StatusCapabilities {
    pub fn parse(status: &str) -> Option<StatusCapabilities> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        };
        Some(StatusCapabilities {
            inheritable: field("CapInh")?,
            permitted: field("CapPrm")?,
            effective: field("CapEff")?,
            bounding: field("CapBnd")?,
            ambient: field("CapAmb")?,
        })
    }
}

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets as two 32-bit words.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// (effective, permitted, inheritable) of the calling thread.
fn capget() -> io::Result<(u64, u64, u64)> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: a version-3 header and the two data words it calls for, alive for the call.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |low: u32, high: u32| u64::from(low) | (u64::from(high) << 32);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
        join(data[0].inheritable, data[1].inheritable),
    ))
}

/// Sets the calling thread's effective, permitted and inheritable sets.
fn capset(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let split = |mask: u64| (mask as u32, (mask >> 32) as u32);
    let (e, p, i) = (split(effective), split(permitted), split(inheritable));
    let data = [
        CapData {
            effective: e.0,
            permitted: p.0,
            inheritable: i.0,
        },
        CapData {
            effective: e.1,
            permitted: p.1,
            inheritable: i.1,
        },
    ];
    // SAFETY: a version-3 header and two data words, alive for the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn prctl(option: libc::c_int, arg2: libc::c_ulong) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(option, arg2, 0 as libc::c_ulong, 0 as libc::c_ulong, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What [`drop_to_runtime_set`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// The capabilities kept in the effective and permitted sets (and the bounding set when
    /// it could be reduced).
    pub kept: u64,
    /// The permitted set before.
    pub before: u64,
    /// Whether the bounding set was reduced (needs CAP_SETPCAP, which root has and a
    /// non-root process granted only the runtime capabilities has not; its bounding set is
    /// then whatever the service manager set).
    pub bounding_reduced: bool,
}

/// Drops every capability not in [`kept_mask`] from all five sets and sets
/// `PR_SET_NO_NEW_PRIVS`. Must run while the process has a single thread.
pub fn drop_to_runtime_set() -> io::Result<Dropped> {
    let threads = fs::read_dir("/proc/self/task")?.count();
    if threads != 1 {
        return Err(io::Error::other(format!(
            "the process has {threads} threads; capabilities are per thread, so they must be \
             dropped before any other thread starts"
        )));
    }
    let (effective, permitted, _) = capget()?;
    let kept = kept_mask(permitted);
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1)?;
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes next.
    let bounding_reduced = effective & bit(cap::SETPCAP) != 0;
    if bounding_reduced {
        let last = last_capability();
        for number in (0..=last).filter(|number| kept & bit(*number) == 0) {
            prctl(libc::PR_CAPBSET_DROP, number.into()).map_err(|err| {
                io::Error::other(format!(
                    "dropping cap {number} from the bounding set: {err}"
                ))
            })?;
        }
    }
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(io::Error::other(format!(
            "clearing the ambient set: {}",
            io::Error::last_os_error()
        )));
    }
    capset(kept, kept, 0).map_err(|err| io::Error::other(format!("capset: {err}")))?;
    let (effective_now, permitted_now, inheritable_now) = capget()?;
    if (effective_now, permitted_now, inheritable_now) != (kept, kept, 0) {
        return Err(io::Error::other(format!(
            "capabilities after capset are effective {effective_now:#x}, permitted \
             {permitted_now:#x}, inheritable {inheritable_now:#x}; wanted {kept:#x}"
        )));
    }
    Ok(Dropped {
        kept,
        before: permitted,
        bounding_reduced,
    })
}

/// The highest capability number this kernel knows (`/proc/sys/kernel/cap_last_cap`).
fn last_capability() -> u32 {
    fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(40)
        .min(63)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: u64 = 0x1ff_ffff_ffff; // capabilities 0..=40
    const RUNTIME: u64 = bit(cap::NET_ADMIN) | bit(cap::NET_RAW);

    #[test]
    fn root_keeps_exactly_net_admin_and_net_raw() {
        assert_eq!(kept_mask(ROOT), RUNTIME);
        assert_eq!(kept_mask(ROOT), 0x3000);
        assert_eq!(names(kept_mask(ROOT)), ["CAP_NET_ADMIN", "CAP_NET_RAW"]);
    }

    #[test]
    fn nothing_is_added_that_was_not_held() {
        let three = bit(cap::BPF) | bit(cap::PERFMON) | bit(cap::NET_ADMIN);
        assert_eq!(kept_mask(three), bit(cap::NET_ADMIN));
        assert_eq!(
            kept_mask(bit(cap::NET_RAW) | bit(cap::SYS_ADMIN)),
            bit(cap::NET_RAW)
        );
        assert_eq!(kept_mask(0), 0);
    }

    #[test]
    fn names_every_bit() {
        assert_eq!(
            names(bit(0) | bit(40)),
            ["CAP_CHOWN", "CAP_CHECKPOINT_RESTORE"]
        );
        assert_eq!(names(bit(41)), ["cap_41"]);
        assert!(names(0).is_empty());
    }

    #[test]
    fn parses_status_sets() {
        let status = "Name:\tnp\nCapInh:\t0000000000000000\nCapPrm:\t0000000000003000\n\
                      CapEff:\t0000000000003000\nCapBnd:\t0000000000003000\n\
                      CapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";
        let parsed = StatusCapabilities::parse(status).unwrap();
        assert_eq!(parsed.permitted, RUNTIME);
        assert_eq!(parsed.effective, RUNTIME);
        assert_eq!(parsed.bounding, RUNTIME);
        assert_eq!(parsed.inheritable, 0);
        assert!(StatusCapabilities::parse("CapEff:\tzz\n").is_none());
    }
}
