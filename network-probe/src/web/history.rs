//! The recent `/probe` requests, for the landing page (in the blackbox_exporter manner): a ring
//! of the last [`CAPACITY`] requests that named a module, each with its time, module, targets,
//! result, duration and the text `?debug=true` would have shown (the probe log and its metrics),
//! served at `/logs?id=N`.
//!
//! Memory is bounded twice: [`CAPACITY`] entries, and at most [`MAX_TEXT_BYTES`] of text each
//! (an iperf3 log stays well under it; a longer one is cut and says so), so the ring holds at
//! most about 1.6 MiB whatever callers send. Targets and modules are the caller's text: the
//! landing page escapes them ([`super::landing`]).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use crate::support::sync::lock;

/// Requests kept (blackbox_exporter keeps 100 too).
pub(crate) const CAPACITY: usize = 100;

/// Longest text kept per request.
const MAX_TEXT_BYTES: usize = 16 * 1024;

/// Longest target list kept per request (a URI is at most 8 KiB anyway).
const MAX_TARGET_BYTES: usize = 512;

/// One `/probe` request.
#[derive(Debug)]
pub(crate) struct ProbeRecord {
    /// Increasing from 1; the `id` of `/logs?id=`.
    pub id: u64,
    /// When the request arrived.
    pub time: SystemTime,
    pub module: String,
    /// The `target=` values, comma-separated.
    pub target: String,
    /// `success`, `failure`, or why the probe did not run (`bad request`, `refused`,
    /// `overloaded`).
    pub result: &'static str,
    pub duration: Duration,
    /// The probe log and metrics (as `?debug=true` shows them), or the error answered.
    pub text: String,
}

/// The ring of recent requests, shared by all connections.
#[derive(Debug, Default)]
pub struct ProbeHistory {
    ring: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    last_id: u64,
    entries: VecDeque<Arc<ProbeRecord>>,
}

impl ProbeHistory {
    /// Adds a request, dropping the oldest beyond [`CAPACITY`]; returns its id.
    pub(crate) fn record(
        &self,
        time: SystemTime,
        module: &str,
        target: &str,
        result: &'static str,
        duration: Duration,
        text: &str,
    ) -> u64 {
        let mut ring = lock(&self.ring);
        ring.last_id += 1;
        let record = ProbeRecord {
            id: ring.last_id,
            time,
            module: bounded(module, MAX_TARGET_BYTES),
            target: bounded(target, MAX_TARGET_BYTES),
            result,
            duration,
            text: bounded(text, MAX_TEXT_BYTES),
        };
        if ring.entries.len() == CAPACITY {
            ring.entries.pop_front();
        }
        ring.entries.push_back(Arc::new(record));
        ring.last_id
    }

    /// The request `id`, while it is in the ring.
    pub(crate) fn get(&self, id: u64) -> Option<Arc<ProbeRecord>> {
        let ring = lock(&self.ring);
        let oldest = ring.entries.front()?.id;
        let index = usize::try_from(id.checked_sub(oldest)?).ok()?;
        ring.entries.get(index).cloned()
    }

    /// The requests in the ring, newest first.
    pub(crate) fn recent(&self) -> Vec<Arc<ProbeRecord>> {
        lock(&self.ring).entries.iter().rev().cloned().collect()
    }
}

/// `text` cut to at most `limit` bytes on a character boundary, saying so when cut.
fn bounded(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes cut)", &text[..end], text.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(history: &ProbeHistory, target: &str) -> u64 {
        history.record(
            SystemTime::UNIX_EPOCH,
            "ping",
            target,
            "success",
            Duration::from_millis(3),
            "log",
        )
    }

    #[test]
    fn keeps_the_last_hundred_newest_first() {
        let history = ProbeHistory::default();
        for n in 1..=250 {
            assert_eq!(add(&history, &format!("t{n}")), n);
        }
        let recent = history.recent();
        assert_eq!(recent.len(), CAPACITY);
        assert_eq!((recent[0].id, recent[0].target.as_str()), (250, "t250"));
        assert_eq!(recent[CAPACITY - 1].id, 151);
        assert!(history.get(150).is_none());
        assert_eq!(history.get(151).unwrap().target, "t151");
        assert_eq!(history.get(250).unwrap().target, "t250");
        assert!(history.get(251).is_none());
        assert!(ProbeHistory::default().get(1).is_none());
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        let history = ProbeHistory::default();
        let text = "é".repeat(MAX_TEXT_BYTES);
        let id = history.record(
            SystemTime::UNIX_EPOCH,
            "m",
            &"x".repeat(10_000),
            "failure",
            Duration::ZERO,
            &text,
        );
        let record = history.get(id).unwrap();
        assert!(
            record.text.len() < MAX_TEXT_BYTES + 40,
            "{}",
            record.text.len()
        );
        assert!(
            record
                .text
                .ends_with(&format!("… ({} bytes cut)", MAX_TEXT_BYTES))
        );
        assert!(record.target.len() < MAX_TARGET_BYTES + 40);
    }
}
