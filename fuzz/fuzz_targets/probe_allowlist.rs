//! Fuzzes the `--probe.allow` judgement of `/probe` targets (untrusted query values): any text
//! must give a verdict, never a panic, and an address target is never sent to the resolver;
//! entries may name a port (`10.0.0.0/8:443`), and a port no entry allows is never allowed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use network_probe::probe::allowlist::{self, Allowlist, Screening};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first line is a flag value, the rest a target.
    let (entry, target) = text.split_once('\n').unwrap_or((text, text));
    let mut entries = vec![
        allowlist::parse_entry("10.0.0.0/8").unwrap(),
        allowlist::parse_entry("*.example.com").unwrap(),
        allowlist::parse_entry("192.0.2.0/24:443").unwrap(),
    ];
    if let Ok(parsed) = allowlist::parse_entry(entry) {
        entries.push(parsed);
    }
    let list = Allowlist::new(&entries);
    if let Screening::Resolve { host } = list.screen(target) {
        assert!(host.parse::<std::net::IpAddr>().is_err(), "{host:?}");
        let _ = list.check_addresses(target, &["10.1.2.3".parse().unwrap()], &[]);
    }
    // 192.0.2.0/24 allows port 443 only (unless the fuzzed entry widens it).
    let port_only = Allowlist::new(&[allowlist::parse_entry("192.0.2.0/24:443").unwrap()]);
    let host = allowlist::target_host(target);
    for ports in [&[][..], &[22][..], &[443, 22][..]] {
        let verdict = port_only.screen_host(target, host, ports);
        assert_ne!(verdict, Screening::Allowed, "{target:?} {ports:?}");
        if let Screening::Resolve { host } = verdict {
            assert!(host.parse::<std::net::IpAddr>().is_err(), "{host:?}");
        }
        let addresses = ["192.0.2.1".parse().unwrap()];
        assert!(port_only.check_addresses(target, &addresses, ports).is_err());
    }
    assert_eq!(
        port_only.check_addresses(target, &["192.0.2.1".parse().unwrap()], &[443]),
        Ok(())
    );
});
