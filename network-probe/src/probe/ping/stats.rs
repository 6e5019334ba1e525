//! Per-target statistics of the ping prober (pure): lifetime counters, the window of the last
//! samples (loss ratio, mean and standard deviation) and an RTT histogram with exponential
//! buckets for quantiles. A lost probe is a sample without RTT: it raises the loss ratio and
//! never enters an RTT figure as zero.

use std::collections::VecDeque;

/// Upper bounds of the RTT histogram: 50 µs doubling 20 times (to about 26 s), the
/// smokeping-style spread that resolves loopback and intercontinental paths alike.
pub(crate) fn histogram_bounds() -> [f64; 20] {
    let mut bounds = [0.0; 20];
    let mut bound = 50e-6;
    for slot in &mut bounds {
        *slot = bound;
        bound *= 2.0;
    }
    bounds
}

/// How one probe ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Outcome {
    /// A reply arrived in time.
    Reply {
        /// The RTT reported: kernel stamps, or the user clock when a stamp was missing.
        rtt: f64,
        /// The RTT by the user-space clock (before send to after receive), for comparison.
        user_rtt: f64,
        /// `rtt` is the user clock because a kernel stamp was missing.
        user_clock: bool,
        /// The reply was a TCP RST (closed port).
        rst: bool,
    },
    /// No reply within the timeout.
    Lost,
}

/// Everything one target has measured since probing started.
#[derive(Clone, Debug)]
pub(crate) struct TargetStats {
    pub sent: u64,
    pub received: u64,
    pub rst: u64,
    pub user_clock: u64,
    pub latency_sum: f64,
    pub latency_squared_sum: f64,
    pub user_latency_sum: f64,
    /// Replies per bucket of [`histogram_bounds`] (RTT <= bound, above the previous bound).
    pub buckets: [u64; 20],
    /// The last samples, oldest first.
    pub window: VecDeque<Outcome>,
    window_size: usize,
}

/// Figures over the window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct WindowSummary {
    pub samples: usize,
    pub loss_ratio: f64,
    /// Mean RTT of the replies; `None` when none arrived.
    pub mean: Option<f64>,
    /// Population standard deviation of the replies' RTTs; `None` when none arrived.
    pub deviation: Option<f64>,
}

impl TargetStats {
    pub(crate) fn new(window_size: usize) -> Self {
        TargetStats {
            sent: 0,
            received: 0,
            rst: 0,
            user_clock: 0,
            latency_sum: 0.0,
            latency_squared_sum: 0.0,
            user_latency_sum: 0.0,
            buckets: [0; 20],
            window: VecDeque::with_capacity(window_size.max(1)),
            window_size: window_size.max(1),
        }
    }

    /// Counts one probe sent.
    pub(crate) fn record_sent(&mut self) {
        self.sent += 1;
    }

    /// Records how a probe ended.
    pub(crate) fn record(&mut self, outcome: Outcome) {
        if let Outcome::Reply {
            rtt,
            user_rtt,
            user_clock,
            rst,
        } = outcome
        {
            self.received += 1;
            self.rst += u64::from(rst);
            self.user_clock += u64::from(user_clock);
            self.latency_sum += rtt;
            self.latency_squared_sum += rtt * rtt;
            self.user_latency_sum += user_rtt;
            let bounds = histogram_bounds();
            if let Some(slot) = bounds.iter().position(|bound| rtt <= *bound) {
                self.buckets[slot] += 1;
            }
        }
        if self.window.len() == self.window_size {
            self.window.pop_front();
        }
        self.window.push_back(outcome);
    }

    /// Histogram buckets as the encoder takes them: (upper bound, count in that bucket alone),
    /// with the RTTs above the last bound in a final +Inf bucket.
    pub(crate) fn histogram_buckets(&self) -> Vec<(f64, u64)> {
        let mut buckets: Vec<(f64, u64)> =
            histogram_bounds().into_iter().zip(self.buckets).collect();
        let bounded: u64 = self.buckets.iter().sum();
        buckets.push((f64::INFINITY, self.received - bounded));
        buckets
    }

    /// Loss, mean and deviation over the window.
    pub(crate) fn summary(&self) -> WindowSummary {
        let rtts: Vec<f64> = self
            .window
            .iter()
            .filter_map(|outcome| match outcome {
                Outcome::Reply { rtt, .. } => Some(*rtt),
                Outcome::Lost => None,
            })
            .collect();
        let samples = self.window.len();
        let lost = samples - rtts.len();
        let loss_ratio = if samples == 0 {
            0.0
        } else {
            lost as f64 / samples as f64
        };
        if rtts.is_empty() {
            return WindowSummary {
                samples,
                loss_ratio,
                mean: None,
                deviation: None,
            };
        }
        let mean = rtts.iter().sum::<f64>() / rtts.len() as f64;
        let variance = rtts.iter().map(|rtt| (rtt - mean).powi(2)).sum::<f64>() / rtts.len() as f64;
        WindowSummary {
            samples,
            loss_ratio,
            mean: Some(mean),
            deviation: Some(variance.sqrt()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(rtt: f64) -> Outcome {
        Outcome::Reply {
            rtt,
            user_rtt: rtt + 50e-6,
            user_clock: false,
            rst: false,
        }
    }

    #[test]
    fn window_loss_mean_deviation() {
        let mut stats = TargetStats::new(4);
        assert_eq!(
            stats.summary(),
            WindowSummary {
                samples: 0,
                loss_ratio: 0.0,
                mean: None,
                deviation: None
            }
        );
        for outcome in [
            reply(0.001),
            Outcome::Lost,
            reply(0.003),
            reply(0.002),
            reply(0.004),
        ] {
            stats.record_sent();
            stats.record(outcome);
        }
        // The window keeps the last 4: lost, 3, 2, 4 ms.
        let summary = stats.summary();
        assert_eq!(summary.samples, 4);
        assert_eq!(summary.loss_ratio, 0.25);
        assert!((summary.mean.unwrap() - 0.003).abs() < 1e-12);
        assert!((summary.deviation.unwrap() - (2.0f64 / 3.0).sqrt() * 1e-3).abs() < 1e-12);
        assert_eq!((stats.sent, stats.received), (5, 4));
        assert!((stats.latency_sum - 0.010).abs() < 1e-12);
        assert!((stats.latency_squared_sum - 30e-6).abs() < 1e-12);
    }

    #[test]
    fn all_lost_is_loss_not_zero_rtt() {
        let mut stats = TargetStats::new(3);
        for _ in 0..5 {
            stats.record(Outcome::Lost);
        }
        let summary = stats.summary();
        assert_eq!(summary.loss_ratio, 1.0);
        assert_eq!(summary.mean, None);
        assert_eq!(stats.histogram_buckets().last(), Some(&(f64::INFINITY, 0)));
    }

    #[test]
    fn histogram_buckets() {
        let bounds = histogram_bounds();
        assert_eq!(bounds[0], 50e-6);
        assert_eq!(bounds[1], 100e-6);
        assert!((bounds[19] - 50e-6 * 2f64.powi(19)).abs() < 1e-9);
        let mut stats = TargetStats::new(10);
        for rtt in [20e-6, 50e-6, 60e-6, 1.0, 100.0] {
            stats.record(reply(rtt));
        }
        let buckets = stats.histogram_buckets();
        assert_eq!(buckets[0], (50e-6, 2));
        assert_eq!(buckets[1], (100e-6, 1));
        assert_eq!(buckets[15].1, 1, "1 s is in (0.82, 1.64]");
        assert_eq!(
            buckets[20],
            (f64::INFINITY, 1),
            "100 s is above the last bound"
        );
        assert_eq!(
            buckets.iter().map(|(_, count)| count).sum::<u64>(),
            stats.received
        );
    }
}
