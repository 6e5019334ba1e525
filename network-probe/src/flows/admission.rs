//! Admission by weight: which flow label sets get a series of their own under the budget
//! (`--flows.max-series`), chosen by a measure (`--flows.rank-by`: bytes, packets or
//! retransmits) over a window (`--flows.rank-window`), instead of by arrival.
//!
//! Every label set with a live flow has a weight: what its flows gained of the measure,
//! decayed exponentially with the window as time constant ([`decayed`]), so a weight is about
//! what the label set moved in the last window. After each read of the maps the table ranks the
//! label sets ([`select`]): the `K` heaviest have a series; an admitted one keeps its place
//! unless a challenger weighs more than [`HYSTERESIS`] times as much, so two label sets of about
//! the same weight do not swap places on every read (series would flap). A label set that
//! leaves the top K is folded: what its series counted goes to its interface's `other` row and
//! its flows count there from then on, so no counter goes backwards and an interface's rows
//! still sum to its interface counter. One that enters the top K starts a series at zero: what
//! it counted before stays in `other`.
//!
//! Pure: the table ([`crate::flows::table`]) keeps the weights and applies what [`select`]
//! returns.

use std::time::Duration;

/// How much heavier than an admitted label set a challenger must be to take its place.
pub(crate) const HYSTERESIS: f64 = 2.0;

/// Default `--flows.rank-window`.
pub(crate) const DEFAULT_WINDOW: &str = "1m";

/// The measure label sets are ranked by (`--flows.rank-by`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RankBy {
    #[default]
    Bytes,
    Packets,
    Retransmits,
}

/// What a weight is multiplied by `elapsed` later, with the window as time constant.
pub(crate) fn decay_factor(elapsed: Duration, window: Duration) -> f64 {
    if window.is_zero() {
        0.0
    } else {
        (-elapsed.as_secs_f64() / window.as_secs_f64()).exp()
    }
}

/// A weight `elapsed` after it was `weight`, with the window as time constant, plus `gained`
/// (what the table computes, one factor for all; here for the tests).
#[cfg(test)]
pub(crate) fn decayed(weight: f64, elapsed: Duration, window: Duration, gained: u64) -> f64 {
    weight * decay_factor(elapsed, window) + gained as f64
}

/// A label set as the ranking sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Candidate {
    /// The caller's handle (the table's place).
    pub id: u32,
    pub weight: f64,
    /// Whether it has a series now.
    pub admitted: bool,
}

/// What changes after a ranking: label sets to fold into `other`, label sets to admit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    pub fold: Vec<u32>,
    pub admit: Vec<u32>,
}

/// The admitted label sets after ranking `candidates` for `k` places: the `k` largest by
/// weight, an admitted one's weight counting [`HYSTERESIS`] times (ties go to the admitted,
/// then to the lower id, so the result does not depend on the order given). Returns only the
/// changes. With at most `k` candidates every one is admitted.
pub(crate) fn select(candidates: &[Candidate], k: usize) -> Changes {
    let mut changes = Changes::default();
    if candidates.len() <= k {
        changes.admit = candidates
            .iter()
            .filter(|c| !c.admitted)
            .map(|c| c.id)
            .collect();
        return changes;
    }
    let effective = |c: &Candidate| {
        if c.admitted {
            c.weight * HYSTERESIS
        } else {
            c.weight
        }
    };
    // Heaviest first; among equals the admitted, then the lower id.
    let order = |a: &Candidate, b: &Candidate| {
        effective(b)
            .total_cmp(&effective(a))
            .then(b.admitted.cmp(&a.admitted))
            .then(a.id.cmp(&b.id))
    };
    let mut ranked = candidates.to_vec();
    if k > 0 {
        ranked.select_nth_unstable_by(k - 1, order);
    }
    let (top, rest) = ranked.split_at(k);
    changes.admit = top.iter().filter(|c| !c.admitted).map(|c| c.id).collect();
    changes.fold = rest.iter().filter(|c| c.admitted).map(|c| c.id).collect();
    changes.admit.sort_unstable();
    changes.fold.sort_unstable();
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(id: u32, weight: f64, admitted: bool) -> Candidate {
        Candidate {
            id,
            weight,
            admitted,
        }
    }

    #[test]
    fn the_heaviest_take_the_places() {
        let changes = select(
            &[
                candidate(1, 10.0, true),
                candidate(2, 1000.0, false),
                candidate(3, 5.0, true),
                candidate(4, 50.0, false),
            ],
            2,
        );
        assert_eq!(
            changes,
            Changes {
                fold: vec![1, 3],
                admit: vec![2, 4],
            }
        );
    }

    #[test]
    fn an_incumbent_stays_unless_a_challenger_weighs_twice_as_much() {
        // 150 against 100: not enough to take the place.
        let kept = select(&[candidate(1, 100.0, true), candidate(2, 150.0, false)], 1);
        assert_eq!(kept, Changes::default());
        // Exactly twice: a tie, which the incumbent keeps.
        let tie = select(&[candidate(1, 100.0, true), candidate(2, 200.0, false)], 1);
        assert_eq!(tie, Changes::default());
        let taken = select(&[candidate(1, 100.0, true), candidate(2, 201.0, false)], 1);
        assert_eq!(
            taken,
            Changes {
                fold: vec![1],
                admit: vec![2],
            }
        );
        // Between two challengers of equal weight the lower id wins, whatever the order.
        let a = select(
            &[
                candidate(7, 1.0, false),
                candidate(3, 1.0, false),
                candidate(5, 0.0, true),
            ],
            1,
        );
        let b = select(
            &[
                candidate(5, 0.0, true),
                candidate(3, 1.0, false),
                candidate(7, 1.0, false),
            ],
            1,
        );
        assert_eq!(a, b);
        assert_eq!(a.admit, vec![3]);
    }

    #[test]
    fn room_admits_everyone_and_no_room_admits_no_one() {
        let all = select(&[candidate(1, 0.0, false), candidate(2, 3.0, true)], 5);
        assert_eq!(all.admit, vec![1]);
        assert!(all.fold.is_empty());
        let none = select(&[candidate(1, 9.0, true), candidate(2, 3.0, false)], 0);
        assert_eq!(
            none,
            Changes {
                fold: vec![1],
                admit: vec![],
            }
        );
    }

    #[test]
    fn alternating_bursts_within_the_margin_do_not_flap() {
        // Two label sets taking turns at being slightly heavier, read every second with a
        // one-minute window: the first admitted keeps its place throughout.
        let (window, second) = (Duration::from_secs(60), Duration::from_secs(1));
        let (mut a, mut b) = (0.0, 0.0);
        let mut a_admitted = true;
        for round in 0..600 {
            let (gain_a, gain_b) = if round % 2 == 0 {
                (100, 130)
            } else {
                (130, 100)
            };
            a = decayed(a, second, window, gain_a);
            b = decayed(b, second, window, gain_b);
            let changes = select(
                &[candidate(0, a, a_admitted), candidate(1, b, !a_admitted)],
                1,
            );
            assert_eq!(changes, Changes::default(), "round {round}");
            a_admitted = !changes.fold.contains(&0) && a_admitted;
        }
    }

    #[test]
    fn weights_forget_over_the_window() {
        let window = Duration::from_secs(60);
        let w = decayed(0.0, Duration::ZERO, window, 1000);
        assert_eq!(w, 1000.0);
        let later = decayed(w, window, window, 0);
        assert!(
            (later - 1000.0 / std::f64::consts::E).abs() < 1e-9,
            "{later}"
        );
        // A zero window keeps only the last gain.
        assert_eq!(decayed(w, Duration::from_secs(1), Duration::ZERO, 7), 7.0);
    }
}
