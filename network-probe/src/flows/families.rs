//! Which metric families a flow series carries (`--flows.families`): each family of
//! [`crate::flows::exposition`] is named by its metric name without the `network_probe_flow_`
//! prefix (`packets`, `bytes`, `retransmits`, `rst`, ...). The default is packets, bytes and
//! retransmits: a Prometheus series is one family of one label set, so with the budget of label
//! sets (`--flows.max-series`) this is what a host costs a fleet's store; the other families are
//! opt-in: the TCP flag counters, the timestamps, connection attempts by outcome and the passive
//! signals (`ce_packets`, `tcp_ece_segments`, `tcp_cwr_segments`, `pmtu_messages`), whose
//! series follow the same budget, ranking and `other` rows as the packets.
//! The passive RTT families (`rtt_samples`, `rtt_min_seconds`, `rtt_seconds`) are opt-in too:
//! they would add three series to every label set of a fleet's budget, and only flows whose two
//! directions cross the watched interfaces have samples. The names are listed here in the
//! exposition's order; a unit test of
//! [`crate::flows::exposition`] checks the two lists agree, so a family added there must be
//! named here too (this module stays below the exposition: no import cycle).

/// The flow families by name, in the exposition's order.
pub(crate) const NAMES: [&str; 19] = [
    "packets",
    "bytes",
    "retransmits",
    "rst",
    "syn",
    "fin",
    "zero_window",
    "df_packets",
    "window_scale",
    "first_seen_timestamp_seconds",
    "last_seen_timestamp_seconds",
    "connection_attempts",
    "ce_packets",
    "tcp_ece_segments",
    "tcp_cwr_segments",
    "pmtu_messages",
    "rtt_samples",
    "rtt_min_seconds",
    "rtt_seconds",
];

/// The flow families by name, in the exposition's order.
fn family_names() -> impl Iterator<Item = &'static str> {
    NAMES.iter().copied()
}

/// The families a flow series carries, as a bit per family in the exposition's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowFamilies {
    bits: u64,
}

impl FlowFamilies {
    pub const DEFAULT: &'static str = "packets,bytes,retransmits";

    /// Every family.
    pub fn all() -> Self {
        let count = family_names().count();
        FlowFamilies {
            bits: if count >= 64 {
                u64::MAX
            } else {
                (1 << count) - 1
            },
        }
    }

    /// Whether the family at `index` (in the exposition's order) is carried.
    pub fn has(&self, index: usize) -> bool {
        index < 64 && self.bits & (1 << index) != 0
    }

    /// Whether the family named `name` is carried.
    pub fn has_named(&self, name: &str) -> bool {
        family_names()
            .position(|known| known == name)
            .is_some_and(|index| self.has(index))
    }

    /// Number of families carried.
    pub fn count(&self) -> usize {
        self.bits.count_ones() as usize
    }
}

impl std::fmt::Display for FlowFamilies {
    /// The canonical comma-separated list, in the exposition's order.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = family_names()
            .enumerate()
            .filter_map(|(index, name)| self.has(index).then_some(name))
            .collect();
        f.write_str(&names.join(","))
    }
}

impl std::str::FromStr for FlowFamilies {
    type Err = String;

    /// Parses a comma-separated list such as `packets,bytes,rst`, or `all`.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut bits = 0u64;
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "all" {
                bits |= FlowFamilies::all().bits;
                continue;
            }
            let Some(index) = family_names().position(|known| known == name) else {
                let known: Vec<&str> = family_names().collect();
                return Err(format!(
                    "unknown flow family {name:?} (known: {}, or all)",
                    known.join(", ")
                ));
            };
            bits |= 1 << index;
        }
        if bits == 0 {
            return Err("no flow family named (at least one, e.g. bytes)".to_string());
        }
        Ok(FlowFamilies { bits })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_canonically() {
        let families: FlowFamilies = " rst, bytes,packets".parse().unwrap();
        assert_eq!(families.to_string(), "packets,bytes,rst");
        assert_eq!(families.count(), 3);
        let default: FlowFamilies = FlowFamilies::DEFAULT.parse().unwrap();
        assert_eq!(default.to_string(), FlowFamilies::DEFAULT);
        let all: FlowFamilies = "all".parse().unwrap();
        assert_eq!(all, FlowFamilies::all());
        assert_eq!(all.count(), family_names().count());
        assert!(all.to_string().contains("last_seen_timestamp_seconds"));
    }

    #[test]
    fn a_bad_name_is_named_with_the_known_ones() {
        let err = "bytes,byte".parse::<FlowFamilies>().unwrap_err();
        assert!(
            err.starts_with("unknown flow family \"byte\" (known: packets, bytes, retransmits,"),
            "{err}"
        );
        assert!(err.ends_with(", or all)"), "{err}");
        let err = " , ".parse::<FlowFamilies>().unwrap_err();
        assert!(err.contains("no flow family"), "{err}");
    }
}
