//! Running the datapath programs on hand-built frames through BPF_PROG_TEST_RUN, shared by the
//! malformed-packet tests (`tests/integration/malformed.rs`) and the datapath benchmark
//! (`benches/datapath.rs`):
//! - pure frame builders: Ethernet with optional 802.1Q / 802.1ad tags, IPv4 with options,
//!   IPv6 with extension headers, TCP with options;
//! - [`TestRunDatapath`]: the embedded eBPF object with some of its programs loaded (verified,
//!   never attached), its statistics entries created, and runs of a program on one frame.
//!
//! The kernel runs test-run packets as if received by the loopback device of the calling
//! thread's network namespace, so the programs account them to `lo`'s interface index; no real
//! interface is touched. Needs root (CAP_BPF and CAP_NET_ADMIN).

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, ProgramArray},
    programs::{Program, ProgramError, TestRun, TestRunOptions},
};
use network_probe::kernel::flow_maps::{FlowMapEntries, FlowMaps};
use network_probe_common::{
    DEVICE_STATS_MAP, DeviceStats, Direction, FAMILY_IPV4, FAMILY_IPV6, FLOW_SLOT_COUNTERS_MAP,
    FLOW_SLOTS_DEFAULT, FLOW_SLOTS_MAP, FLOWS4_MAP, FLOWS6_MAP, FlowKey, FlowStats,
    IFINDEX_SLOTS_MAP,
};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const ETH_HLEN: usize = 14;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPV6_HOP_BY_HOP: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_ESP: u8 = 50;
pub const IPV6_AH: u8 = 51;
pub const IPV6_DEST_OPTS: u8 = 60;

/// IPv4 flags: Don't Fragment and More Fragments.
const IPV4_DF: u16 = 0x4000;
pub const IPV4_MF: u16 = 0x2000;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// TCP options as they appear on the wire.
pub const TCP_NOP: u8 = 1;
pub const TCP_EOL: u8 = 0;
pub const TCP_MSS_1460: [u8; 4] = [2, 4, 0x05, 0xb4];
pub const TCP_SACK_PERMITTED: [u8; 2] = [4, 2];
pub const TCP_TIMESTAMPS: [u8; 10] = [8, 10, 0, 0, 0x12, 0x34, 0, 0, 0, 0];

/// TCP window scale option with `shift`.
pub const fn tcp_window_scale(shift: u8) -> [u8; 3] {
    [3, 3, shift]
}

/// IPv4 source and destination of every built IPv4 packet.
const IPV4_SRC: [u8; 4] = [192, 0, 2, 1];
const IPV4_DST: [u8; 4] = [198, 51, 100, 2];
/// IPv6 source and destination of every built IPv6 packet (documentation prefix).
const IPV6_SRC: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const IPV6_DST: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// An Ethernet frame: fixed MAC addresses, one 4-byte tag per entry of `tags` (its TPID,
/// outermost first), then `ethertype` and `payload`.
pub fn ethernet(tags: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    for (vlan, tpid) in (100u16..).zip(tags) {
        frame.extend_from_slice(&tpid.to_be_bytes());
        frame.extend_from_slice(&vlan.to_be_bytes());
    }
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An IPv4 header; [`Ipv4::packet`] prepends it to a payload.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub protocol: u8,
    /// Flags and fragment offset (in 8-byte units), as in the header.
    pub flags_fragment: u16,
    /// Options, padded with zeros (end of options) to a multiple of 4 bytes.
    pub options: Vec<u8>,
    /// Overrides the header length field (in 4-byte words) computed from the options.
    pub ihl: Option<u8>,
    /// Overrides the total length field computed from the header and payload.
    pub total_len: Option<u16>,
    /// Overrides the version field (4).
    pub version: Option<u8>,
}

impl Default for Ipv4 {
    fn default() -> Self {
        Ipv4 {
            protocol: IPPROTO_TCP,
            flags_fragment: IPV4_DF,
            options: Vec::new(),
            ihl: None,
            total_len: None,
            version: None,
        }
    }
}

impl Ipv4 {
    /// Header length in bytes, options included.
    pub fn header_len(&self) -> usize {
        20 + self.options.len().next_multiple_of(4)
    }

    /// This header (checksum filled in) followed by `payload`.
    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let header_len = self.header_len();
        let ihl = self.ihl.unwrap_or((header_len / 4) as u8);
        let total_len = self
            .total_len
            .unwrap_or((header_len + payload.len()) as u16);
        let mut packet = vec![(self.version.unwrap_or(4) << 4) | (ihl & 0x0f), 0];
        packet.extend_from_slice(&total_len.to_be_bytes());
        packet.extend_from_slice(&[0x12, 0x34]);
        packet.extend_from_slice(&self.flags_fragment.to_be_bytes());
        packet.extend_from_slice(&[64, self.protocol, 0, 0]);
        packet.extend_from_slice(&IPV4_SRC);
        packet.extend_from_slice(&IPV4_DST);
        packet.extend_from_slice(&self.options);
        packet.resize(header_len, 0);
        let checksum = internet_checksum(&packet);
        packet[10..12].copy_from_slice(&checksum.to_be_bytes());
        packet.extend_from_slice(payload);
        packet
    }
}

/// Internet checksum (RFC 1071) of `bytes`, by the daemon's own implementation (unit-tested
/// against kernel-made packets in probe/ping/packet.rs).
fn internet_checksum(bytes: &[u8]) -> u16 {
    network_probe::probe::ping::packet::checksum(&[bytes])
}

/// An IPv6 packet: the fixed header with `next_header`, then `payload` (extension headers and
/// transport). `payload_len` overrides the payload length field.
pub fn ipv6(next_header: u8, payload_len: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x60, 0, 0, 0];
    packet.extend_from_slice(&payload_len.unwrap_or(payload.len() as u16).to_be_bytes());
    packet.extend_from_slice(&[next_header, 64]);
    packet.extend_from_slice(&IPV6_SRC);
    packet.extend_from_slice(&IPV6_DST);
    packet.extend_from_slice(payload);
    packet
}

/// An IPv6 options-style extension header (hop-by-hop, routing, destination options) of
/// `units` 8-byte units, filled with PadN (routing: type 0, no segments left).
pub fn ipv6_extension(next_header: u8, units: u8) -> Vec<u8> {
    let len = usize::from(units) * 8;
    let mut header = vec![next_header, units - 1];
    // One PadN option covering the rest: type 1, length len - 4.
    header.extend_from_slice(&[1, (len - 4) as u8]);
    header.resize(len, 0);
    header
}

/// An IPv6 authentication header with a 4-byte ICV (16 bytes).
pub fn ipv6_auth_header(next_header: u8) -> Vec<u8> {
    // Length in 4-byte units minus 2: 16 bytes -> 2.
    let mut header = vec![next_header, 2, 0, 0];
    header.extend_from_slice(&[0, 0, 0x10, 0x01, 0, 0, 0, 1, 0xaa, 0xbb, 0xcc, 0xdd]);
    header
}

/// An IPv6 fragment header: `offset` in 8-byte units, `more` fragments flag.
pub fn ipv6_fragment_header(next_header: u8, offset: u16, more: bool) -> Vec<u8> {
    let field = (offset << 3) | u16::from(more);
    let mut header = vec![next_header, 0];
    header.extend_from_slice(&field.to_be_bytes());
    header.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    header
}

/// A TCP header; [`Tcp::segment`] prepends it to a payload. The checksum is left zero: the
/// datapath never checks it.
#[derive(Clone, Debug)]
pub struct Tcp {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub flags: u8,
    pub window: u16,
    /// Options, padded with zeros (end of option list) to a multiple of 4 bytes.
    pub options: Vec<u8>,
    /// Overrides the data offset field (in 4-byte words) computed from the options.
    pub data_offset: Option<u8>,
}

impl Default for Tcp {
    fn default() -> Self {
        Tcp {
            src_port: 40000,
            dst_port: 443,
            seq: 1_000_000,
            flags: TCP_ACK,
            window: 502,
            options: Vec::new(),
            data_offset: None,
        }
    }
}

impl Tcp {
    /// Header length in bytes, options included.
    pub fn header_len(&self) -> usize {
        20 + self.options.len().next_multiple_of(4)
    }

    /// This header followed by `payload`.
    pub fn segment(&self, payload: &[u8]) -> Vec<u8> {
        let header_len = self.header_len();
        let data_offset = self.data_offset.unwrap_or((header_len / 4) as u8);
        let mut segment = Vec::with_capacity(header_len + payload.len());
        segment.extend_from_slice(&self.src_port.to_be_bytes());
        segment.extend_from_slice(&self.dst_port.to_be_bytes());
        segment.extend_from_slice(&self.seq.to_be_bytes());
        segment.extend_from_slice(&2_000_000u32.to_be_bytes());
        segment.extend_from_slice(&[data_offset << 4, self.flags]);
        segment.extend_from_slice(&self.window.to_be_bytes());
        segment.extend_from_slice(&[0, 0, 0, 0]);
        segment.extend_from_slice(&self.options);
        segment.resize(header_len, 0);
        segment.extend_from_slice(payload);
        segment
    }

    /// The flow key the datapath files this segment under when it arrives at ingress of
    /// `ifindex` carried by IPv4 ([`IPV4_SRC`] to [`IPV4_DST`]) or IPv6.
    pub fn flow_key(&self, ifindex: u32, family: u8) -> FlowKey {
        let mut src = [0; 16];
        let mut dst = [0; 16];
        if family == FAMILY_IPV4 {
            src[..4].copy_from_slice(&IPV4_SRC);
            dst[..4].copy_from_slice(&IPV4_DST);
        } else {
            assert_eq!(family, FAMILY_IPV6);
            src = IPV6_SRC;
            dst = IPV6_DST;
        }
        FlowKey {
            src,
            dst,
            src_port: self.src_port,
            dst_port: self.dst_port,
            ifindex,
            family,
            direction: Direction::Ingress as u8,
            _pad: [0; 2],
        }
    }
}

/// What one test run of a program returned.
#[derive(Debug)]
pub struct Run {
    /// The program's return value as the kernel reports it (TC's -1 reads as `u32::MAX`).
    pub return_value: u32,
    /// The frame as the program left it.
    pub data_out: Vec<u8>,
    /// Mean time per repetition, as measured by the kernel (whole nanoseconds).
    pub kernel_duration: std::time::Duration,
}

/// The embedded eBPF object with some programs loaded and the statistics entries of `lo`
/// (both directions) created, as `Datapath::attach` creates them for an interface.
pub struct TestRunDatapath {
    ebpf: Ebpf,
    device_stats: PerCpuArray<MapData, DeviceStats>,
    flows: FlowMaps,
    /// Interface index test-run packets are accounted to: the loopback device's.
    pub ifindex: u32,
    /// The passive-RTT program array once [`TestRunDatapath::fill_rtt_programs`] filled it,
    /// kept open (the kernel empties a program array when its last descriptor closes).
    rtt_programs: Option<ProgramArray<MapData>>,
    /// `IFINDEX_SLOTS`, kept open: a program loaded later refers to it by descriptor.
    _ifindex_slots: Array<MapData, u32>,
}

impl TestRunDatapath {
    /// Loads the embedded object with the daemon's default flow slot table and verifies
    /// `programs` (TC classifiers or XDP programs, by name). Attaches nothing.
    pub fn load(programs: &[&str]) -> Self {
        Self::load_with_slots(programs, FLOW_SLOTS_DEFAULT)
    }

    /// [`TestRunDatapath::load`] with `slots` flow slots (0: every flow in the LRU maps).
    pub fn load_with_slots(programs: &[&str], slots: u32) -> Self {
        let object = network_probe::kernel::datapath::ebpf_object();
        assert!(
            !object.is_empty(),
            "built with AYA_BUILD_SKIP: no eBPF object to test"
        );
        let slot_sizes = network_probe::kernel::datapath::FlowSlotSizes::new(slots);
        let mut loader = EbpfLoader::new();
        slot_sizes.apply(&mut loader);
        let mut ebpf = loader.load(object).expect("loading the eBPF object");
        for &name in programs {
            let program = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("no program {name} in the object"));
            let loaded = match program {
                Program::SchedClassifier(program) => program.load(),
                Program::Xdp(program) => program.load(),
                _ => panic!("{name} is neither a TC nor an XDP program"),
            };
            loaded.unwrap_or_else(|err| panic!("verifying {name}: {err:?}"));
        }
        let device_stats =
            PerCpuArray::try_from(ebpf.take_map(DEVICE_STATS_MAP).expect("DEVICE_STATS map"))
                .expect("opening DEVICE_STATS");
        let flows4 = HashMap::try_from(ebpf.take_map(FLOWS4_MAP).expect("FLOWS4 map"))
            .expect("opening FLOWS4");
        let flows6 = HashMap::try_from(ebpf.take_map(FLOWS6_MAP).expect("FLOWS6 map"))
            .expect("opening FLOWS6");
        let slot_maps = (
            Array::try_from(ebpf.take_map(FLOW_SLOTS_MAP).expect("FLOW_SLOTS map"))
                .expect("opening FLOW_SLOTS"),
            PerCpuArray::try_from(
                ebpf.take_map(FLOW_SLOT_COUNTERS_MAP)
                    .expect("FLOW_SLOT_COUNTERS map"),
            )
            .expect("opening FLOW_SLOT_COUNTERS"),
        );
        let flows = FlowMaps::new(flows4, flows6, (slots > 0).then_some(slot_maps))
            .expect("preparing the flow slot table");
        let ifindex =
            network_probe::kernel::rtnetlink::interface_index("lo").expect("ifindex of lo");
        // Slot 0 (a fresh map's statistics are zero), stored plus one.
        let mut slots: Array<_, u32> =
            Array::try_from(ebpf.take_map(IFINDEX_SLOTS_MAP).expect("IFINDEX_SLOTS map"))
                .expect("opening IFINDEX_SLOTS");
        slots.set(ifindex, 1, 0).expect("assigning lo a slot");
        TestRunDatapath {
            ebpf,
            device_stats,
            flows,
            ifindex,
            rtt_programs: None,
            _ifindex_slots: slots,
        }
    }

    /// Loads the TC passive-RTT programs and fills their program array as the daemon does
    /// (`network-probe/src/kernel/rtt.rs`, `RttMaps::take`), so the tail calls of `tc_ingress`
    /// and `tc_egress` run them; without it those tail calls fail and do nothing.
    pub fn fill_rtt_programs(&mut self) {
        const PROGRAMS: [(&str, u32); 2] = [("tc_rtt_store", 0), ("tc_rtt_echo", 1)];
        for (name, _) in PROGRAMS {
            let Some(Program::SchedClassifier(program)) = self.ebpf.program_mut(name) else {
                panic!("no TC program {name} in the object");
            };
            program
                .load()
                .unwrap_or_else(|err| panic!("verifying {name}: {err:?}"));
        }
        let mut array = ProgramArray::try_from(
            self.ebpf
                .take_map("RTT_TC_PROGRAMS")
                .expect("RTT_TC_PROGRAMS map"),
        )
        .expect("opening RTT_TC_PROGRAMS");
        for (name, index) in PROGRAMS {
            let Some(Program::SchedClassifier(program)) = self.ebpf.program(name) else {
                panic!("no TC program {name} in the object");
            };
            let fd = program.fd().expect("program descriptor");
            array
                .set(index, fd, 0)
                .unwrap_or_else(|err| panic!("filling RTT_TC_PROGRAMS[{index}]: {err:?}"));
        }
        self.rtt_programs = Some(array);
    }

    /// Runs `program` `repeat` times on `frame`. The kernel refuses (EINVAL) frames shorter
    /// than an Ethernet header.
    pub fn run(&self, program: &str, frame: &[u8], repeat: u32) -> Result<Run, ProgramError> {
        let program = self
            .ebpf
            .program(program)
            .unwrap_or_else(|| panic!("no program {program} in the object"));
        // Room to spare, so a program growing the frame would show rather than fail the run.
        let mut data_out = vec![0u8; frame.len() + 256];
        let options = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut data_out),
            repeat,
            ..TestRunOptions::default()
        };
        let result = match program {
            Program::SchedClassifier(program) => program.test_run(options)?,
            Program::Xdp(program) => program.test_run(options)?,
            _ => unreachable!("load() accepted only TC and XDP programs"),
        };
        data_out.truncate(result.data_size_out as usize);
        Ok(Run {
            return_value: result.return_value,
            data_out,
            kernel_duration: result.duration,
        })
    }

    /// Statistics of `lo` at ingress, summed over CPUs.
    pub fn ingress_stats(&self) -> DeviceStats {
        // lo has slot 0: ingress at index 0.
        let per_cpu = self
            .device_stats
            .get(&(Direction::Ingress as u32), 0)
            .expect("reading DEVICE_STATS");
        let mut stats = DeviceStats::ZERO;
        for cpu in per_cpu.iter() {
            stats.accumulate(cpu);
        }
        stats
    }

    /// Statistics of `lo` at egress, summed over CPUs.
    pub fn egress_stats(&self) -> DeviceStats {
        // lo has slot 0: egress at index 1.
        let per_cpu = self
            .device_stats
            .get(&(Direction::Egress as u32), 0)
            .expect("reading DEVICE_STATS");
        let mut stats = DeviceStats::ZERO;
        for cpu in per_cpu.iter() {
            stats.accumulate(cpu);
        }
        stats
    }

    /// Every flow in the flow maps (slots and LRU maps), once.
    pub fn flows(&mut self) -> Vec<(FlowKey, FlowStats)> {
        self.flows.read()
    }

    /// Every key of the flow maps.
    pub fn flow_keys(&mut self) -> Vec<FlowKey> {
        self.flows().into_iter().map(|(key, _)| key).collect()
    }

    /// The flow entry of `key`, if any.
    pub fn flow(&mut self, key: &FlowKey) -> Option<FlowStats> {
        self.flows()
            .into_iter()
            .find(|(found, _)| found == key)
            .map(|(_, stats)| stats)
    }

    /// Where the last read found flows (slots, LRU maps).
    pub fn flow_map_entries(&self) -> FlowMapEntries {
        self.flows.entries()
    }

    /// The slot the last read found `key` in, if any.
    pub fn flow_slot(&self, key: &FlowKey) -> Option<u32> {
        self.flows.slot_of(key)
    }

    /// Deletes the flow entry of `key` (wherever it is).
    pub fn remove_flow(&mut self, key: &FlowKey) {
        self.flows.read();
        self.flows.remove(std::slice::from_ref(key));
    }
}
