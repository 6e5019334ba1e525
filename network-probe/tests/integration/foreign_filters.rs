//! Another tool's cls_bpf filter named like ours survives the daemon: start-up removes only the
//! filters a killed run of ours left (recognised by the program they run: pinned by the
//! previous run, or this build's tag without a pin path), never by name alone.
//!
//! The foreign program is a few hand-assembled instructions loaded with bpf(2) here (named
//! `tc_egress`, counting the packets it sees in its own array map) and attached over netlink
//! with aya, which gives the filter the program's name, as the aya book's `tc_egress` firewall
//! would be attached.

use std::{
    net::SocketAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
    process::Command,
};

use aya::programs::{
    SchedClassifier, TcAttachType,
    tc::{self, NlOptions, TcAttachOptions},
};
use network_probe_testkit::{Bpffs, Daemon, VethPair, dotted, in_netns, send_datagrams};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// A zeroed `union bpf_attr` with the fields of one command written at their offsets.
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }
    fn u32(mut self, at: usize, value: u32) -> Attr {
        self.0[at..at + 4].copy_from_slice(&value.to_ne_bytes());
        self
    }
    fn u64(mut self, at: usize, value: u64) -> Attr {
        self.0[at..at + 8].copy_from_slice(&value.to_ne_bytes());
        self
    }
    fn bytes(mut self, at: usize, value: &[u8]) -> Attr {
        self.0[at..at + value.len()].copy_from_slice(value);
        self
    }
    fn call(mut self, command: libc::c_long) -> std::io::Result<i64> {
        // SAFETY: a bpf_attr of 128 bytes (zero beyond the fields set) for `command`; every
        // pointer in it refers to memory that outlives the call.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                command,
                self.0.as_mut_ptr(),
                self.0.len() as u32,
            )
        };
        if result < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(result)
        }
    }
}

/// One eBPF instruction.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut bytes = [0u8; 8];
    bytes[0] = code;
    bytes[1] = dst | (src << 4);
    bytes[2..4].copy_from_slice(&off.to_le_bytes());
    bytes[4..8].copy_from_slice(&imm.to_le_bytes());
    bytes
}

/// A program of another tool, attached at egress of `pair.a_if`: its counter map, its id.
struct Foreign {
    counter: OwnedFd,
    program_id: u32,
}

impl Foreign {
    /// Loads the program (named `tc_egress`), pins it in `bpffs` and attaches it over netlink
    /// at egress of `pair.a_if`, the way an aya-based tool does. The filter is left to the
    /// kernel (it goes with the veth).
    fn attach(pair: &VethPair, bpffs: &Bpffs) -> Foreign {
        let counter = Attr::new()
            .u32(0, BPF_MAP_TYPE_ARRAY)
            .u32(4, 4)
            .u32(8, 8)
            .u32(12, 1)
            .call(BPF_MAP_CREATE)
            .expect("creating the foreign counter map");
        // SAFETY: bpf(2) returned a new descriptor that nothing else owns.
        let counter = unsafe { OwnedFd::from_raw_fd(counter as i32) };
        // counter[0] += 1; return TC_ACT_UNSPEC (the next filter runs, the packet passes).
        let program: Vec<[u8; 8]> = vec![
            insn(0x62, 10, 0, -4, 0),                 // *(u32 *)(r10 - 4) = 0
            insn(0xbf, 2, 10, 0, 0),                  // r2 = r10
            insn(0x07, 2, 0, 0, -4),                  // r2 += -4
            insn(0x18, 1, 1, 0, counter.as_raw_fd()), // r1 = map (ld_imm64)
            insn(0x00, 0, 0, 0, 0),                   //   (its second half)
            insn(0x85, 0, 0, 0, 1),                   // call bpf_map_lookup_elem
            insn(0x15, 0, 0, 2, 0),                   // if r0 == 0 goto +2
            insn(0xb7, 1, 0, 0, 1),                   // r1 = 1
            insn(0xdb, 0, 1, 0, 0),                   // lock *(u64 *)(r0 + 0) += r1
            insn(0xb7, 0, 0, 0, -1),                  // r0 = TC_ACT_UNSPEC
            insn(0x95, 0, 0, 0, 0),                   // exit
        ];
        let instructions: Vec<u8> = program.concat();
        let license = b"GPL\0";
        let program = Attr::new()
            .u32(0, BPF_PROG_TYPE_SCHED_CLS)
            .u32(4, (instructions.len() / 8) as u32)
            .u64(8, instructions.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64)
            .bytes(48, b"tc_egress")
            .call(BPF_PROG_LOAD)
            .expect("loading the foreign tc_egress program");
        // SAFETY: as above.
        let program = unsafe { OwnedFd::from_raw_fd(program as i32) };
        let pin: PathBuf = bpffs.mount.join("foreign_tc_egress");
        let pin_c = std::ffi::CString::new(pin.to_str().unwrap()).unwrap();
        Attr::new()
            .u64(0, pin_c.as_ptr() as u64)
            .u32(8, program.as_raw_fd() as u32)
            .call(BPF_OBJ_PIN)
            .expect("pinning the foreign program");
        drop(program);
        let ifname = pair.a_if.clone();
        let program_id = in_netns(&pair.a, move || {
            let mut program = SchedClassifier::from_pin(&pin).expect("opening the pinned program");
            let _ = tc::qdisc_add_clsact(&ifname);
            let link = program
                .attach_with_options(
                    &ifname,
                    TcAttachType::Egress,
                    TcAttachOptions::Netlink(NlOptions::default()),
                )
                .expect("attaching the foreign program");
            // Another tool's filter: it stays when this handle goes (inside the namespace).
            std::mem::forget(program.take_link(link).unwrap());
            program.info().unwrap().id()
        });
        Foreign {
            counter,
            program_id,
        }
    }

    /// Packets the foreign program has seen.
    fn count(&self) -> u64 {
        let key = 0u32;
        let mut value = 0u64;
        Attr::new()
            .u32(0, self.counter.as_raw_fd() as u32)
            .u64(8, &key as *const u32 as u64)
            .u64(16, &mut value as *mut u64 as u64)
            .call(BPF_MAP_LOOKUP_ELEM)
            .expect("reading the foreign counter");
        value
    }
}

/// (name given at attach, program id, program name) of every cls_bpf filter at `direction` of
/// `pair.a_if`, from `tc -j filter show`.
fn filters(pair: &VethPair, direction: &str) -> Vec<(String, u64, String)> {
    let output = Command::new("ip")
        .args([
            "netns", "exec", &pair.a, "tc", "-j", "filter", "show", "dev",
        ])
        .args([&pair.a_if, direction])
        .output()
        .expect("running tc");
    assert!(output.status.success(), "{output:?}");
    if output.stdout.trim_ascii().is_empty() {
        return Vec::new();
    }
    let filters: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    filters
        .iter()
        .filter(|filter| filter["kind"] == "bpf" && filter["options"]["prog"].is_object())
        .map(|filter| {
            let options = &filter["options"];
            (
                options["bpf_name"].as_str().unwrap_or("").to_string(),
                options["prog"]["id"].as_u64().unwrap(),
                options["prog"]["name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Program ids at egress of `pair.a_if` other than `foreign`'s (the daemon's, each named
/// `tc_egress`), asserting the foreign filter is still there.
fn ours_at_egress(pair: &VethPair, foreign: &Foreign) -> Vec<u64> {
    let found = filters(pair, "egress");
    assert!(
        found.contains(&(
            "tc_egress".to_string(),
            u64::from(foreign.program_id),
            "tc_egress".to_string()
        )),
        "the foreign tc_egress filter is still attached: {found:?}"
    );
    found
        .into_iter()
        .filter(|(_, id, _)| *id != u64::from(foreign.program_id))
        .map(|(name, id, program)| {
            assert_eq!(
                (name.as_str(), program.as_str()),
                ("tc_egress", "tc_egress")
            );
            id
        })
        .collect()
}

/// Sends `count` datagrams out of `pair.a_if` (egress there).
fn send_out(pair: &VethPair, count: usize) {
    let a: SocketAddr = format!("{}:5000", dotted(pair.a_addr)).parse().unwrap();
    let b: SocketAddr = format!("{}:5000", dotted(pair.b_addr)).parse().unwrap();
    send_datagrams(&pair.a, a, &pair.b, b, count, 100);
}

/// Asserts the foreign program still runs: it counts `count` more packets sent out.
fn still_counts(pair: &VethPair, foreign: &Foreign, count: usize, when: &str) {
    let before = foreign.count();
    send_out(pair, count);
    assert!(
        foreign.count() >= before + count as u64,
        "{when}: the foreign program counts what leaves ({before} -> {})",
        foreign.count()
    );
}

/// Starts, kills and restarts the daemon (netlink filters) with `pin_arg`, then stops it:
/// the foreign filter survives every step and keeps counting, and there is never more than one
/// filter of ours at egress.
fn foreign_filter_survives(pin_arg: &str) {
    let pair = VethPair::new();
    let bpffs = Bpffs::new();
    let foreign = Foreign::attach(&pair, &bpffs);
    still_counts(&pair, &foreign, 10, "before the daemon");
    assert_eq!(ours_at_egress(&pair, &foreign), Vec::<u64>::new());

    let args = [
        "--interface",
        &pair.a_if,
        "--datapath.tc-attach",
        "netlink",
        pin_arg,
        // No state file: nothing of the host's default one is read or written.
        "--datapath.state-file=",
    ];
    let mut first = Daemon::start(&pair.a, &args);
    let first_ids = ours_at_egress(&pair, &foreign);
    assert_eq!(first_ids.len(), 1, "{pin_arg}: one filter of ours");
    still_counts(&pair, &foreign, 10, "beside the daemon");

    // A killed run leaves its filters; the next start removes them, not the foreign one.
    assert_eq!(first.stop(libc::SIGKILL).code(), None);
    assert_eq!(ours_at_egress(&pair, &foreign), first_ids);
    let mut second = Daemon::start(&pair.a, &args);
    let second_ids = ours_at_egress(&pair, &foreign);
    assert_eq!(
        second_ids.len(),
        1,
        "{pin_arg}: the killed run's filter removed, one of ours attached"
    );
    assert_ne!(second_ids, first_ids);
    assert_eq!(filters(&pair, "ingress").len(), 1, "one tc_ingress");
    still_counts(&pair, &foreign, 10, "after the restart");

    // A clean stop removes ours only.
    assert_eq!(second.stop(libc::SIGTERM).code(), Some(0));
    assert_eq!(ours_at_egress(&pair, &foreign), Vec::<u64>::new());
    assert_eq!(filters(&pair, "ingress"), []);
    still_counts(&pair, &foreign, 10, "after the daemon stopped");
}

#[test]
fn another_tools_tc_egress_filter_survives_with_pinned_programs() {
    let bpffs = Bpffs::new();
    foreign_filter_survives(&format!(
        "--datapath.pin-path={}",
        bpffs.pin_path().display()
    ));
}

#[test]
fn another_tools_tc_egress_filter_survives_without_a_pin_path() {
    // No pins: the killed run's filters are recognised by this build's program tag.
    foreign_filter_survives("--datapath.pin-path=");
}
