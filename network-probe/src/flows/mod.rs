//! From kernel flow maps to flow series: the bounded, monotonic flow table ([`table`], pure),
//! what drives it from the datapath ([`tracker`]), the state file that keeps what user space
//! folded across restarts ([`state`]) and the flow families of a scrape ([`exposition`]); the
//! per-flow passive signals' totals per series ([`signals`]); which label sets get a series
//! under the budget, by weight ([`admission`]), and which families a series carries
//! ([`families`]).
//!
//! Builds on [`crate::kernel`]; knows nothing of the command line, the configuration file or
//! HTTP. TCP connection outcomes from the kernel's pending-SYN maps: [`outcomes`]; passive RTT
//! samples per flow from the kernel's RTT maps: [`rtt`].

pub(crate) mod admission;
pub(crate) mod exposition;
pub(crate) mod families;
pub(crate) mod outcomes;
pub(crate) mod rtt;
pub(crate) mod signals;
pub(crate) mod state;
pub(crate) mod table;
pub(crate) mod tracker;
