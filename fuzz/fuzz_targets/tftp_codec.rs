//! Fuzzes the TFTP codec and client state machine: any datagram must decode to a packet or an
//! error, and any sequence of datagrams and timeouts must drive a transfer without panicking,
//! never delivering more bytes than the cap or a payload longer than the block size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use network_probe::probe::tftp::codec::{self, OptionRequest, Transfer};

fuzz_target!(|data: &[u8]| {
    let _ = codec::parse(data);
    // First byte picks the requested options; the rest is a sequence of datagrams, each
    // prefixed by a length byte (0 = a timeout instead of a datagram).
    let Some((&selector, mut rest)) = data.split_first() else {
        return;
    };
    let requested = OptionRequest {
        blksize: (selector & 1 != 0).then_some(8 + u16::from(selector)),
        tsize: selector & 2 != 0,
        timeout: (selector & 4 != 0).then_some(1 + (selector >> 4)),
        windowsize: (selector & 8 != 0).then_some(1 + u16::from(selector >> 4)),
    };
    let max_bytes = 4096;
    let Ok((mut transfer, _rrq)) = Transfer::new("fuzz.bin", requested, max_bytes) else {
        return;
    };
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (packet, tail) = tail.split_at(len);
        rest = tail;
        let step = if len == 0 {
            transfer.on_timeout()
        } else {
            transfer.on_packet(packet)
        };
        if let Some(payload) = step.payload {
            assert!(payload.len() <= usize::from(transfer.negotiated().blksize));
        }
        assert!(transfer.bytes() <= max_bytes);
        if step.outcome.is_some() {
            break;
        }
        let _ = transfer.retransmit_interval();
    }
});
