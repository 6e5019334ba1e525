//! Turning a test into metrics: our own results document (what each of our streams sent or
//! received), the seed's view of the test from both sides' results (sent is the sending side's
//! count, received the receiving side's), and the metrics under edgard/iperf3_exporter's names
//! (throughput metrics only after a completed test), built with [`crate::probe::report`].

use super::{
    Failure,
    protocol::{Results, StreamResult, Transport},
    streams::StreamTally,
};
use crate::probe::{ProbeReport, report::Report};

/// What one completed test measured, in the seed's terms: "sent" is the sending side's count
/// (ours in forward mode, the server's in reverse mode), "received" the receiving side's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measurement {
    pub sent_bytes: u64,
    pub sent_seconds: f64,
    pub received_bytes: u64,
    pub received_seconds: f64,
    /// TCP retransmissions of the sender, when known.
    pub retransmits: Option<u64>,
    pub udp: Option<UdpMeasurement>,
}

/// UDP loss and jitter, as the receiving side counted them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UdpMeasurement {
    pub sent_packets: u64,
    pub lost_packets: u64,
    pub lost_ratio: f64,
    pub jitter_seconds: f64,
}

/// Our results document: what each of our streams sent or received.
pub(super) fn local_results(
    ids: &[u32],
    tallies: &[StreamTally],
    sending: bool,
    transport: Transport,
    seconds: f64,
) -> Results {
    let tcp_sender = sending && transport == Transport::Tcp;
    Results {
        sender_has_retransmits: if tcp_sender { 1 } else { -1 },
        streams: ids
            .iter()
            .zip(tallies)
            .map(|(&id, tally)| {
                let receiver = tally.udp_receiver.clone().unwrap_or_default();
                StreamResult {
                    id,
                    bytes: tally.bytes,
                    retransmits: if tcp_sender {
                        Some(tally.retransmits.unwrap_or(0))
                    } else {
                        None
                    },
                    jitter: receiver.jitter,
                    errors: receiver.lost,
                    packets: tally.packets,
                    seconds,
                }
            })
            .collect(),
    }
}

/// The seed's view of one test from both sides' results.
pub(super) fn combine(
    ours: &Results,
    theirs: &Results,
    sending: bool,
    transport: Transport,
) -> Measurement {
    let (sender, receiver) = if sending {
        (ours, theirs)
    } else {
        (theirs, ours)
    };
    let sum = |results: &Results| results.streams.iter().map(|s| s.bytes).sum::<u64>();
    let seconds = |results: &Results| {
        results
            .streams
            .iter()
            .map(|s| s.seconds)
            .fold(0.0, f64::max)
    };
    let retransmits = (transport == Transport::Tcp && sender.sender_has_retransmits == 1)
        .then(|| sender.streams.iter().filter_map(|s| s.retransmits).sum());
    let udp = (transport == Transport::Udp).then(|| {
        let sent_packets: u64 = sender.streams.iter().map(|s| s.packets).sum();
        let received_packets: u64 = receiver.streams.iter().map(|s| s.packets).sum();
        let lost_packets: u64 = receiver.streams.iter().map(|s| s.errors).sum();
        let streams = receiver.streams.len().max(1) as f64;
        UdpMeasurement {
            sent_packets,
            lost_packets,
            lost_ratio: if received_packets > 0 {
                lost_packets as f64 / received_packets as f64
            } else {
                0.0
            },
            jitter_seconds: receiver.streams.iter().map(|s| s.jitter).sum::<f64>() / streams,
        }
    });
    Measurement {
        sent_bytes: sum(sender),
        sent_seconds: seconds(sender),
        received_bytes: sum(receiver),
        received_seconds: seconds(receiver),
        retransmits,
        udp,
    }
}

/// The probe's metrics. Throughput metrics only exist after a completed test.
pub(super) fn registry(
    outcome: &Result<Measurement, Failure>,
    transport: Transport,
) -> ProbeReport {
    let mut report = Report::new();
    report
        .gauge(
            "iperf3_up",
            "Whether the iperf3 test completed (1) or failed (0)",
            if outcome.is_ok() { 1.0 } else { 0.0 },
        )
        .failure(
            "iperf3_failure",
            "Why the test failed: 1 for the reason that applies, 0 for the others",
            outcome.as_ref().err().map(|failure| failure.reason),
        );
    let Ok(m) = outcome else {
        return report.finish(false);
    };
    let rate = |bytes: u64, seconds: f64| {
        if seconds > 0.0 {
            bytes as f64 / seconds
        } else {
            0.0
        }
    };
    for (name, help, value) in [
        (
            "iperf3_sent_bytes",
            "Bytes the sending side wrote during the test",
            m.sent_bytes as f64,
        ),
        (
            "iperf3_sent_seconds",
            "How long the sending side sent, in seconds",
            m.sent_seconds,
        ),
        (
            "iperf3_received_bytes",
            "Bytes the receiving side read during the test",
            m.received_bytes as f64,
        ),
        (
            "iperf3_received_seconds",
            "How long the receiving side received, in seconds",
            m.received_seconds,
        ),
        (
            "iperf3_sent_bytes_per_second",
            "Sent bytes over the sending time",
            rate(m.sent_bytes, m.sent_seconds),
        ),
        (
            "iperf3_received_bytes_per_second",
            "Received bytes over the receiving time",
            rate(m.received_bytes, m.received_seconds),
        ),
    ] {
        report.gauge(name, help, value);
    }
    if let (Transport::Tcp, Some(retransmits)) = (transport, m.retransmits) {
        report.gauge(
            "iperf3_retransmits",
            "TCP segments the sending side retransmitted during the test",
            retransmits as f64,
        );
    }
    if let Some(udp) = &m.udp {
        report
            .gauge(
                "iperf3_sent_packets",
                "UDP datagrams the sending side sent",
                udp.sent_packets as f64,
            )
            .gauge(
                "iperf3_lost_packets",
                "UDP datagrams the receiving side found missing",
                udp.lost_packets as f64,
            )
            .gauge(
                "iperf3_lost_percent",
                "Lost UDP datagrams in percent of those expected by the receiver",
                udp.lost_ratio * 100.0,
            )
            .gauge(
                "iperf3_jitter_seconds",
                "UDP interarrival jitter seen by the receiver (RFC 3550), in seconds",
                udp.jitter_seconds,
            );
    }
    report.finish(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::iperf3::FailureReason;

    #[test]
    fn combine_assigns_sides_like_iperf3() {
        let stream = |id, bytes, retransmits, seconds| StreamResult {
            id,
            bytes,
            retransmits,
            seconds,
            ..StreamResult::default()
        };
        let ours = Results {
            sender_has_retransmits: 1,
            streams: vec![stream(1, 100, Some(2), 2.0), stream(3, 50, Some(1), 2.0)],
        };
        let theirs = Results {
            sender_has_retransmits: -1,
            streams: vec![stream(1, 90, None, 2.1), stream(3, 50, None, 2.1)],
        };
        let forward = combine(&ours, &theirs, true, Transport::Tcp);
        assert_eq!(
            (
                forward.sent_bytes,
                forward.received_bytes,
                forward.retransmits
            ),
            (150, 140, Some(3))
        );
        assert_eq!((forward.sent_seconds, forward.received_seconds), (2.0, 2.1));
        // Reverse: the server sent; its results carry the retransmits.
        let reverse = combine(&theirs, &ours, false, Transport::Tcp);
        assert_eq!(
            (
                reverse.sent_bytes,
                reverse.received_bytes,
                reverse.retransmits
            ),
            (150, 140, Some(3))
        );
        let udp_sender = Results {
            sender_has_retransmits: -1,
            streams: vec![StreamResult {
                id: 1,
                bytes: 1448 * 100,
                packets: 100,
                ..StreamResult::default()
            }],
        };
        let udp_receiver = Results {
            sender_has_retransmits: -1,
            streams: vec![StreamResult {
                id: 1,
                bytes: 1448 * 98,
                packets: 100,
                errors: 2,
                jitter: 0.001,
                ..StreamResult::default()
            }],
        };
        let udp = combine(&udp_sender, &udp_receiver, true, Transport::Udp)
            .udp
            .unwrap();
        assert_eq!((udp.sent_packets, udp.lost_packets), (100, 2));
        assert!((udp.lost_ratio - 0.02).abs() < 1e-12);
        assert_eq!(udp.jitter_seconds, 0.001);
    }

    #[test]
    fn failure_registry_names_the_reason() {
        let outcome = Err(Failure::new(FailureReason::Busy, "x"));
        let text = crate::metrics::render(&registry(&outcome, Transport::Tcp).registry).unwrap();
        assert!(text.contains("iperf3_up 0"), "{text}");
        assert!(text.contains("iperf3_failure{reason=\"busy\"} 1"), "{text}");
        assert!(
            text.contains("iperf3_failure{reason=\"timeout\"} 0"),
            "{text}"
        );
        assert!(!text.contains("iperf3_sent_bytes"), "{text}");
    }
}
