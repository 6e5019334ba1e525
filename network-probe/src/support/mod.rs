//! Small leaf helpers every layer may use: durations as flags and files write them, listen
//! addresses. Nothing here knows of the CLI, the configuration file, HTTP or the kernel.

pub mod listen_address;
pub mod units;
