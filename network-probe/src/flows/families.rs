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

    /// The most Prometheus series one flow row (a label set with a series, or an `other` row)
    /// carries with these families: one per family, but `connection_attempts`, which has one
    /// per outcome. A row writes fewer where a family has no sample for it (no attempt, no
    /// signal, no window scale seen, never seen). The sizing figures of docs/fleet.md and
    /// BENCHMARKS.md are taken from here.
    pub fn max_series_per_row(&self) -> usize {
        let per_outcome = if self.has_named("connection_attempts") {
            crate::flows::outcomes::Outcome::ALL.len() - 1
        } else {
            0
        };
        self.count() + per_outcome
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
    fn series_per_row_count_the_outcomes() {
        let default: FlowFamilies = FlowFamilies::DEFAULT.parse().unwrap();
        assert_eq!(default.max_series_per_row(), 3);
        let attempts: FlowFamilies = "bytes,connection_attempts".parse().unwrap();
        assert_eq!(attempts.max_series_per_row(), 1 + 4);
        assert_eq!(
            FlowFamilies::all().max_series_per_row(),
            NAMES.len() - 1 + 4
        );
    }

    /// A number written with thousands separators (`55,396`).
    fn number(text: &str) -> usize {
        text.trim_matches(|c: char| !c.is_ascii_digit())
            .replace(',', "")
            .parse()
            .unwrap_or_else(|err| panic!("{text:?}: {err}"))
    }

    /// docs/fleet.md counts the families and sizes a host with the code's figures: the number
    /// of families (all and default), the series per row at `all`, and its arithmetic
    /// `M x (5,000 + 2) + REST = TOTAL`. A family added to the code and not to the docs fails
    /// here.
    #[test]
    fn the_fleet_docs_count_the_families_as_the_code_does() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/fleet.md");
        let fleet = std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{path}: {err}"));
        // Lines wrap anywhere: one space between words.
        let fleet = fleet.split_whitespace().collect::<Vec<_>>().join(" ");
        let (all, default) = (
            FlowFamilies::all(),
            FlowFamilies::DEFAULT.parse::<FlowFamilies>().unwrap(),
        );
        let of = format!("{} of {}", default.count(), all.count());
        assert!(fleet.contains(&of), "docs/fleet.md does not say {of:?}");
        let per_row = format!(
            "`--flows.families all` carries {} families, at most {} series per flow row",
            all.count(),
            all.max_series_per_row()
        );
        assert!(
            fleet.contains(&per_row),
            "docs/fleet.md does not say {per_row:?}"
        );
        // Every sum of the worst case: `M x (5,000 + 2) + REST = TOTAL` or `M x 5,002 + ...`.
        let mut sums = 0;
        for (at, _) in fleet.match_indices(" x (5,000 + 2) + ") {
            let before = fleet[..at].rsplit(' ').next().unwrap();
            let after: Vec<&str> = fleet[at + " x (5,000 + 2) + ".len()..]
                .splitn(4, ' ')
                .collect();
            let (factor, rest, total) = (number(before), number(after[0]), number(after[2]));
            assert_eq!(after[1], "=", "{:?}", &fleet[at..at + 40]);
            assert_eq!(
                factor,
                all.max_series_per_row(),
                "{:?}",
                &fleet[at - 4..at + 40]
            );
            assert_eq!(
                factor * 5_002 + rest,
                total,
                "{:?}",
                &fleet[at - 4..at + 40]
            );
            sums += 1;
        }
        assert!(sums >= 2, "docs/fleet.md: {sums} sums of the worst case");
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
