//! The slowdown factor of the machine the tests run on (a TCG guest is many times slower than
//! the host): every fixed wait of the fixtures is multiplied by it. Its own module so that the
//! daemon and HTTP fixtures both use it without depending on each other.

/// How many times slower than the host the tests run: `NETWORK_PROBE_TEST_SLOWDOWN`, which
/// `cargo xtask kernel-test` sets for its emulated (TCG) guest, where loading the eBPF programs
/// alone takes over 10 s; 1 when unset. Fixed waits for the daemon are multiplied by it.
pub fn slowdown() -> u32 {
    std::env::var("NETWORK_PROBE_TEST_SLOWDOWN")
        .ok()
        .and_then(|value| value.parse().ok())
        .filter(|&factor| factor >= 1)
        .unwrap_or(1)
}
