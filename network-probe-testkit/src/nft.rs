//! Reading nftables rule counters from `nft list` output: the reference count of the tests
//! that compare the daemon's numbers with an nft rule's own counter (ecn, drops, outcomes).

/// The packet count of the only `counter packets N` in `listing` (the output of `nft list
/// table ...` or `nft list chain ...`); panics naming the listing when there is none or more
/// than one, so a test never compares against the wrong rule.
pub fn only_counter_packets(listing: &str) -> u64 {
    let counters: Vec<u64> = listing
        .split("counter packets ")
        .skip(1)
        .map(|rest| {
            rest.split_whitespace()
                .next()
                .and_then(|number| number.parse().ok())
                .unwrap_or_else(|| panic!("no packet count after a counter in {listing}"))
        })
        .collect();
    assert_eq!(counters.len(), 1, "exactly one rule counter in {listing}");
    counters[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_one_counter() {
        let listing = "table inet np {\n\tchain in {\n\t\ttype filter hook input priority filter; policy accept;\n\t\tudp dport 7 counter packets 40 bytes 1120 drop\n\t}\n}\n";
        assert_eq!(only_counter_packets(listing), 40);
    }

    #[test]
    #[should_panic(expected = "exactly one rule counter")]
    fn refuses_two_counters() {
        only_counter_packets("counter packets 1 bytes 2\ncounter packets 3 bytes 4\n");
    }

    #[test]
    #[should_panic(expected = "exactly one rule counter")]
    fn refuses_none() {
        only_counter_packets("table inet np {\n}\n");
    }
}
