//! Cases that do not apply on the kernel under test. A test that needs a kernel feature the
//! kernel lacks never passes silently: it fails naming what is missing, unless the run declares
//! the feature absent in `NETWORK_PROBE_TEST_NOT_APPLICABLE` (comma-separated names, e.g. `tcx`;
//! the qemu guest of `cargo xtask kernel-test` declares what its kernel lacks). Then the case
//! prints `@@NOT-APPLICABLE <case>: <what is missing>` on the process's own stderr (past
//! libtest's capture, so it shows for a passing test too) and the guest runner counts it and
//! names it in its summary.

use std::io::Write as _;

/// The variable a run declares absent features in.
pub const NOT_APPLICABLE_ENV: &str = "NETWORK_PROBE_TEST_NOT_APPLICABLE";

/// The marker line's prefix, as the guest runner reads it.
pub const NOT_APPLICABLE_MARKER: &str = "@@NOT-APPLICABLE ";

/// Whether `case` (a test's name) can run: true when the kernel has `feature`. When it lacks it,
/// prints the marker and returns false if the run declared `feature` absent, else panics naming
/// `missing` (what the case needs, in words).
pub fn applies(case: &str, feature: &str, present: bool, missing: &str) -> bool {
    if present {
        return true;
    }
    let declared = std::env::var(NOT_APPLICABLE_ENV).unwrap_or_default();
    if !declared.split(',').any(|name| name.trim() == feature) {
        panic!(
            "{case}: the kernel lacks {missing}; a run on such a kernel declares it with \
             {NOT_APPLICABLE_ENV}={feature} to count the case as not applicable"
        );
    }
    let _ = writeln!(
        std::io::stderr(),
        "{NOT_APPLICABLE_MARKER}{case}: the kernel lacks {missing}"
    );
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_present_feature_applies() {
        assert!(applies("t", "no-such-feature", true, "nothing"));
    }

    #[test]
    #[should_panic(expected = "the kernel lacks the moon")]
    fn an_undeclared_missing_feature_fails() {
        applies("t", "no-such-feature-declared", false, "the moon");
    }
}
