//! Fuzzes the rtnetlink link-event parser (datagrams from the kernel's `RTNLGRP_LINK` group):
//! any bytes must give events or an `InvalidData` error, never a panic, and a datagram cannot
//! yield more events than it has room for netlink messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use network_probe::kernel::rtnetlink::{LinkEvent, parse_link_events};

/// Smallest netlink message carrying a link event: header (16) + ifinfomsg (16).
const MIN_LINK_MESSAGE: usize = 32;

fuzz_target!(|data: &[u8]| {
    match parse_link_events(data) {
        Ok(events) => {
            assert!(events.len() <= data.len() / MIN_LINK_MESSAGE);
            for event in events {
                if let LinkEvent::New { name, .. } = event {
                    assert!(!name.contains('\0'), "{name:?}");
                }
            }
        }
        Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}"),
    }
});
