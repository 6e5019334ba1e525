//! The benchmark report: `cargo xtask bench` hands over what the benchmarks printed (markdown)
//! and this module writes it to `BENCHMARKS.md` at the workspace root, under a header naming
//! the machine (kernel release, CPU model, CPU count), the revision and the date.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};

/// Writes `report` with its header to `BENCHMARKS.md` under `root`; returns the file's path.
pub(crate) fn write_report(root: &Path, revision: Option<&str>, report: &str) -> Result<PathBuf> {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading /proc/sys/kernel/osrelease")?;
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").context("reading /proc/cpuinfo")?;
    let cpus = std::thread::available_parallelism()
        .context("counting the CPUs available")?
        .get();
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("system clock before 1970")?
        .as_secs()
        / 86_400;
    let (year, month, day) = civil_date(days);
    let header = format!(
        "# Benchmarks\n\nWritten by `cargo xtask bench` on {year:04}-{month:02}-{day:02} (UTC), \
         revision {}.\n\nMachine: Linux {}, {}, {cpus} CPUs (nproc).\n\n",
        revision.unwrap_or("unknown"),
        kernel.trim(),
        cpu_model(&cpuinfo).unwrap_or("unknown CPU"),
    );
    let path = root.join("BENCHMARKS.md");
    fs::write(&path, format!("{header}{}\n", report.trim_end()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The `NETWORK_PROBE_BENCH_*` variables among `vars`, as `NAME=value`, sorted: each makes a
/// benchmark run only part of its sections.
pub(crate) fn selection_variables(vars: impl Iterator<Item = (String, String)>) -> Vec<String> {
    let mut selection: Vec<String> = vars
        .filter(|(name, _)| name.starts_with("NETWORK_PROBE_BENCH_"))
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    selection.sort();
    selection
}

/// The first `model name` of /proc/cpuinfo.
fn cpu_model(cpuinfo: &str) -> Option<&str> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim())
    })
}

/// (year, month, day) of the proleptic Gregorian calendar, `days` after 1970-01-01
/// (H. Hinnant's `civil_from_days`).
fn civil_date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_date_matches_known_days() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(59), (1970, 3, 1));
        // 2000 is a leap year, 2100 is not.
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(11_017), (2000, 3, 1));
        assert_eq!(civil_date(20_453), (2025, 12, 31));
        assert_eq!(civil_date(47_540), (2100, 2, 28));
        assert_eq!(civil_date(47_541), (2100, 3, 1));
    }

    #[test]
    fn selection_variables_are_the_bench_ones() {
        let vars = [
            ("PATH", "/bin"),
            ("NETWORK_PROBE_BENCH_SECTIONS", "scrape"),
            ("NETWORK_PROBE_SOAK_SECONDS", "60"),
            ("NETWORK_PROBE_BENCH_ONLY", "steps"),
        ]
        .map(|(name, value)| (name.to_string(), value.to_string()));
        assert_eq!(
            selection_variables(vars.into_iter()),
            [
                "NETWORK_PROBE_BENCH_ONLY=steps",
                "NETWORK_PROBE_BENCH_SECTIONS=scrape"
            ]
        );
        assert!(selection_variables(std::iter::empty()).is_empty());
    }

    #[test]
    fn cpu_model_takes_the_first_model_name() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 85\n\
                       model name\t: Intel(R) Xeon(R) Processor\n\nprocessor\t: 1\n\
                       model name\t: Other\n";
        assert_eq!(cpu_model(cpuinfo), Some("Intel(R) Xeon(R) Processor"));
        assert_eq!(cpu_model("processor\t: 0\n"), None);
    }
}
