//! Fuzzes the `/probe` query-string parser: any bytes must give a Query or a BadRequest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use network_probe::probe::Query;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(query) = Query::parse(text) {
            let _ = query.get("target");
            let _ = query.flag("debug", false);
            let _ = query.parse_or("port", 0u16, "a port");
        }
    }
});
