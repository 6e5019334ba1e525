//! Fuzzes the Jool reply decoders: any bytes must give a reply or a DecodeError, never a
//! panic; decoded statistics must map to a definition or be left raw.
#![no_main]

use libfuzzer_sys::fuzz_target;
use network_probe::jool::codec::{
    JoolVersion, Layout, StatsReply, parse_instance_list_reply, parse_stats_reply,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(StatsReply::Stats { values, .. }) = parse_stats_reply(data) {
        if let Some(layout) = values
            .iter()
            .map(|(id, _)| *id)
            .max()
            .and_then(Layout::from_last_id)
        {
            for (id, _) in &values {
                let _ = layout.stat(*id).map(|def| def.metric_name());
            }
        }
    }
    let _ = parse_instance_list_reply(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = JoolVersion::parse(text);
        let _ = JoolVersion::from_mismatch_message(text);
    }
});
