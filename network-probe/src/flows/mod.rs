//! From kernel flow maps to flow series: the bounded, monotonic flow table ([`table`], pure),
//! what drives it from the datapath ([`tracker`]), the state file that keeps what user space
//! folded across restarts ([`state`]) and the flow families of a scrape ([`exposition`]); the
//! per-flow passive signals' totals per series ([`signals`]).
//!
//! Builds on [`crate::kernel`]; knows nothing of the command line, the configuration file or
//! HTTP.

pub(crate) mod exposition;
pub(crate) mod signals;
pub(crate) mod state;
pub(crate) mod table;
pub(crate) mod tracker;
