//! Small leaf helpers every layer may use: durations as flags and files write them
//! ([`units`]), listen addresses ([`listen_address`]), poison-tolerant locks ([`sync`]), the
//! one source of randomness ([`random`]) and heap trimming ([`memory`]). Nothing here knows of
//! the CLI, the configuration file, HTTP or the kernel's maps.

pub(crate) mod listen_address;
pub(crate) mod memory;
pub(crate) mod random;
pub(crate) mod sync;
pub(crate) mod units;
