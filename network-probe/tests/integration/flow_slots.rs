//! The flow slot table, run by the kernel through BPF_PROG_TEST_RUN (see tests/testrun): where
//! flows land (their slot, else the LRU map of their family), that counts in either place are
//! exact, that a retired slot is zeroed and reused, that keys colliding on a slot stay apart,
//! and that `--flows.slots 0` leaves every flow in the LRU maps. Needs root.

use network_probe_common::{
    FAMILY_IPV4, FAMILY_IPV6, FLOW_SLOTS_DEFAULT, FlowKey, KernelFlowKey, flow_slot_index,
    flow_slot_shift,
};
use network_probe_testkit::testrun::*;

const TC: &str = "tc_ingress";
const XDP: &str = "xdp_ingress";
/// TC_ACT_UNSPEC as the test run reports it, and XDP_PASS.
const PASS: [(&str, u32); 2] = [(TC, u32::MAX), (XDP, 2)];

/// The slot `key` hashes to in a table of `slots`.
fn slot_of(key: &FlowKey, slots: u32) -> u32 {
    match key.kernel().expect("a key of a known family") {
        KernelFlowKey::V4(key) => flow_slot_index(key.words(), flow_slot_shift(slots), slots - 1),
        KernelFlowKey::V6(key) => flow_slot_index(key.words(), flow_slot_shift(slots), slots - 1),
    }
}

fn frame(tcp: &Tcp, family: u8) -> Vec<u8> {
    if family == FAMILY_IPV4 {
        ethernet(&[], ETH_P_IP, &Ipv4::default().packet(&tcp.segment(&[])))
    } else {
        ethernet(&[], ETH_P_IPV6, &ipv6(IPPROTO_TCP, None, &tcp.segment(&[])))
    }
}

fn run(datapath: &TestRunDatapath, program: &str, frame: &[u8], repeat: u32) {
    let pass = PASS.iter().find(|(name, _)| *name == program).unwrap().1;
    let result = datapath.run(program, frame, repeat).expect("test run");
    assert_eq!(
        result.return_value, pass,
        "{program} did not pass the frame"
    );
}

/// A second segment whose flow hashes to the same slot as `tcp`'s (another source port).
fn colliding(datapath: &TestRunDatapath, tcp: &Tcp, family: u8) -> Tcp {
    let slot = slot_of(&tcp.flow_key(datapath.ifindex, family), FLOW_SLOTS_DEFAULT);
    (1..=u16::MAX)
        .filter(|port| *port != tcp.src_port)
        .map(|src_port| Tcp {
            src_port,
            ..tcp.clone()
        })
        .find(|other| {
            slot_of(
                &other.flow_key(datapath.ifindex, family),
                FLOW_SLOTS_DEFAULT,
            ) == slot
        })
        .expect("some source port shares the slot")
}

#[test]
fn new_flows_take_their_slot_and_colliding_ones_the_lru_map() {
    for program in [TC, XDP] {
        for family in [FAMILY_IPV4, FAMILY_IPV6] {
            let context = format!("{program}, family {family}");
            let mut datapath = TestRunDatapath::load(&[program]);
            let first = Tcp::default();
            let second = colliding(&datapath, &first, family);
            let first_key = first.flow_key(datapath.ifindex, family);
            let second_key = second.flow_key(datapath.ifindex, family);

            run(&datapath, program, &frame(&first, family), 700);
            run(&datapath, program, &frame(&second, family), 300);
            run(&datapath, program, &frame(&first, family), 5);
            let flows = datapath.flows();
            assert_eq!(flows.len(), 2, "{context}: {flows:?}");
            let entries = datapath.flow_map_entries();
            let (in_lru, other_lru) = if family == FAMILY_IPV4 {
                (entries.flows4, entries.flows6)
            } else {
                (entries.flows6, entries.flows4)
            };
            assert_eq!((entries.slots, in_lru, other_lru), (1, 1, 0), "{context}");
            // The programs put the first flow where user space's hash says (which the second
            // was chosen to share).
            assert_eq!(
                datapath.flow_slot(&first_key),
                Some(slot_of(&first_key, FLOW_SLOTS_DEFAULT)),
                "{context}"
            );
            let packets = |key: &FlowKey| {
                flows
                    .iter()
                    .find(|(found, _)| found == key)
                    .map(|(_, stats)| stats.counts.packets)
            };
            assert_eq!(packets(&first_key), Some(705), "{context}: the slot's flow");
            assert_eq!(
                packets(&second_key),
                Some(300),
                "{context}: the LRU map's flow"
            );
            let device = datapath.ingress_stats();
            assert_eq!(device.flows_created, 2, "{context}");
            assert_eq!(device.tcp_packets, 1005, "{context}");
        }
    }
}

#[test]
fn a_retired_slot_is_zeroed_and_taken_by_the_next_new_flow() {
    let mut datapath = TestRunDatapath::load(&[TC]);
    let family = FAMILY_IPV4;
    let first = Tcp::default();
    let second = colliding(&datapath, &first, family);
    let first_key = first.flow_key(datapath.ifindex, family);
    let second_key = second.flow_key(datapath.ifindex, family);

    run(&datapath, TC, &frame(&first, family), 40);
    datapath.remove_flow(&first_key);
    assert_eq!(datapath.flows(), [], "the retired flow is gone");
    assert_eq!(datapath.flow_map_entries().slots, 0);

    // The slot is free again: the colliding flow takes it, counted from zero.
    run(&datapath, TC, &frame(&second, family), 3);
    let flows = datapath.flows();
    assert_eq!(datapath.flow_map_entries().slots, 1);
    assert_eq!(datapath.flow_map_entries().flows4, 0);
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].0, second_key);
    assert_eq!(flows[0].1.counts.packets, 3);
    assert_eq!(
        flows[0].1.counts.bytes,
        3 * frame(&second, family).len() as u64
    );

    // And the first flow, back, now finds its slot taken.
    run(&datapath, TC, &frame(&first, family), 2);
    let flows = datapath.flows();
    assert_eq!(flows.len(), 2);
    assert_eq!(datapath.flow_map_entries().flows4, 1);
    let first_again = flows.iter().find(|(key, _)| *key == first_key).unwrap();
    assert_eq!(first_again.1.counts.packets, 2);
}

#[test]
fn without_a_slot_table_every_flow_is_in_the_lru_maps() {
    for family in [FAMILY_IPV4, FAMILY_IPV6] {
        let mut datapath = TestRunDatapath::load_with_slots(&[TC], 0);
        let tcp = Tcp::default();
        run(&datapath, TC, &frame(&tcp, family), 11);
        let flows = datapath.flows();
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].1.counts.packets, 11);
        let entries = datapath.flow_map_entries();
        assert_eq!(entries.slots, 0);
        assert_eq!(entries.flows4 + entries.flows6, 1);
    }
}

/// Sequence tracking lives in the slot, shared by every CPU: a repeated data segment is a
/// retransmission there as in the LRU map.
#[test]
fn retransmissions_are_judged_in_slots_and_lru_entries_alike() {
    for slots in [FLOW_SLOTS_DEFAULT, 0] {
        let mut datapath = TestRunDatapath::load_with_slots(&[TC], slots);
        let tcp = Tcp {
            flags: TCP_ACK | TCP_PSH,
            ..Tcp::default()
        };
        let data = ethernet(
            &[],
            ETH_P_IP,
            &Ipv4::default().packet(&tcp.segment(&[0x5a; 100])),
        );
        // The first copy is new data, the 9 others repeat its sequence range.
        run(&datapath, TC, &data, 10);
        let flows = datapath.flows();
        assert_eq!(flows.len(), 1);
        assert_eq!(
            (flows[0].1.counts.packets, flows[0].1.counts.retransmits),
            (10, 9),
            "slots {slots}"
        );
        assert_eq!(datapath.ingress_stats().tcp_retransmits, 9);
        let entries = datapath.flow_map_entries();
        assert_eq!(entries.slots, usize::from(slots > 0), "slots {slots}");
    }
}
