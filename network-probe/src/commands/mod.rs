//! What the binary runs, on top of every other layer: the daemon's start-up, signals and
//! shutdown ([`daemon`]), the host doctor `network-probe check` ([`check`]) and one probe from
//! the command line, `network-probe probe` ([`oneshot`]).

pub mod check;
pub mod daemon;
pub mod oneshot;
