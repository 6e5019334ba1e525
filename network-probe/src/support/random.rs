//! The one source of randomness: the kernel's (getrandom(2), through `rand_core`'s `OsRng`),
//! for iperf3 cookies and RSA padding, ping identifiers and first sequence numbers alike.

pub(crate) use rand_core::OsRng;
use rand_core::RngCore as _;

/// Fills `bytes` from the kernel's random source.
pub(crate) fn fill(bytes: &mut [u8]) {
    OsRng.fill_bytes(bytes);
}

/// 64 random bits.
pub(crate) fn u64() -> u64 {
    OsRng.next_u64()
}
