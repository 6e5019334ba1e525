//! The libFuzzer targets in `fuzz/` (one per parser of untrusted bytes), run with cargo-fuzz on
//! the nightly toolchain. cargo-fuzz itself is installed from crates.io on first use into
//! `~/.cache/network-probe/cargo-fuzz/`.
//!
//! Each target has a committed, minimized corpus in `fuzz/corpus/<target>/` (seeds captured
//! from real peers and inputs libFuzzer found interesting), and every input that once crashed
//! it, fixed since, in `fuzz/regressions/<target>/` (kept by name, never minimized away):
//! - `cargo xtask test` replays every corpus and regression input once and fuzzes a little
//!   beyond ([`Fuzzer::replay_all`]); new inputs of that short run go to a scratch directory,
//!   so the test never changes the committed corpus.
//! - `cargo xtask fuzz` fuzzes each target for a given time, adds what it found to the corpus,
//!   minimizes the corpus (`cargo fuzz cmin`) and prints a summary table
//!   ([`Fuzzer::fuzz_all`]).
//!
//! `fuzz/` is its own workspace with its own lockfile, committed so the targets build the
//! versions the daemon ships. Before any build, [`check_lockfiles`] fails when a crate in both
//! `Cargo.lock` and `fuzz/Cargo.lock` is locked at two semver-compatible versions (a
//! `cargo update` in one and not the other), naming the crate and both versions.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Executions beyond the corpus replay in `cargo xtask test` (libFuzzer's `-runs` counts the
/// replayed inputs too, so this is added to the corpus size).
const TEST_EXTRA_RUNS: usize = 2000;

/// Longest a single input may take before libFuzzer reports it as a timeout finding.
const INPUT_TIMEOUT_SECONDS: u32 = 10;

/// Directory holding the `cargo-fuzz` binary, installed when missing.
pub(crate) fn ensure_cargo_fuzz(cache: &Path) -> Result<PathBuf> {
    let prefix = cache.join("cargo-fuzz");
    let bin = prefix.join("bin");
    if bin.join("cargo-fuzz").is_file() {
        return Ok(bin);
    }
    eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} (once)");
    let status = Command::new("cargo")
        .args([
            "install",
            "--locked",
            &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
            "--root",
        ])
        .arg(&prefix)
        .env_remove("RUSTUP_TOOLCHAIN")
        .status()
        .context("starting cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz failed with {status}");
    }
    Ok(bin)
}

/// Names of the fuzz targets (`fuzz/fuzz_targets/*.rs`), sorted.
pub(crate) fn targets(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("fuzz/fuzz_targets");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".rs").map(str::to_string)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// Where cargo-fuzz runs: `cargo` commands prepared by the caller (toolchain PATH, env), the
/// workspace root and the directory of the `cargo-fuzz` binary.
pub(crate) struct Fuzzer<'a> {
    pub cargo: &'a dyn Fn() -> Command,
    pub root: &'a Path,
    pub cargo_fuzz_bin: &'a Path,
}

impl Fuzzer<'_> {
    /// A `cargo +nightly fuzz <args>` command in `fuzz/`.
    fn cargo_fuzz(&self, args: &[&str]) -> Result<Command> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![self.cargo_fuzz_bin.to_path_buf()];
        dirs.extend(std::env::split_paths(&path));
        let mut command = (self.cargo)();
        command
            .current_dir(self.root.join("fuzz"))
            .env("PATH", std::env::join_paths(dirs).context("PATH")?)
            // The fuzz build only needs the daemon's library, not its eBPF object.
            .env("AYA_BUILD_SKIP", "1")
            .args(["+nightly", "fuzz"])
            .args(args);
        Ok(command)
    }

    /// Builds every target once, so that build errors show up once and before any run; first
    /// checks that `fuzz/Cargo.lock` is in step with the workspace's ([`check_lockfiles`]).
    pub(crate) fn build(&self) -> Result<()> {
        check_lockfiles(self.root)?;
        let status = self
            .cargo_fuzz(&["build"])?
            .status()
            .context("starting cargo fuzz build")?;
        if !status.success() {
            bail!("cargo fuzz build failed with {status}");
        }
        Ok(())
    }

    fn corpus(&self, target: &str) -> PathBuf {
        self.root.join("fuzz/corpus").join(target)
    }

    fn regressions(&self, target: &str) -> PathBuf {
        self.root.join("fuzz/regressions").join(target)
    }

    /// Runs `target` on the corpus directories with the given libFuzzer arguments; the
    /// first directory receives new inputs. libFuzzer's output is echoed when `echo` is set
    /// (and kept for the failure message otherwise).
    fn run(
        &self,
        target: &str,
        corpora: &[&Path],
        libfuzzer_args: &[String],
        echo: bool,
    ) -> Result<Run> {
        let mut command = self.cargo_fuzz(&["run", target])?;
        command.args(corpora).arg("--").args(libfuzzer_args).args([
            format!("-timeout={INPUT_TIMEOUT_SECONDS}"),
            "-print_final_stats=1".to_string(),
        ]);
        let start = Instant::now();
        let mut child = command
            .stderr(Stdio::piped())
            .spawn()
            .context("starting cargo fuzz run")?;
        let mut log = Vec::new();
        let (mut executions, mut findings) = (None, Vec::new());
        for line in BufReader::new(child.stderr.take().context("stderr")?).lines() {
            let line = line.context("reading libFuzzer's output")?;
            if echo {
                eprintln!("{line}");
            }
            if let Some(count) = line.strip_prefix("stat::number_of_executed_units:") {
                executions = count.trim().parse().ok();
            }
            // "...; Test unit written to fuzz/artifacts/<target>/crash-<sha1>" for every
            // crash, leak, timeout or out-of-memory input.
            if let Some((_, path)) = line.split_once("Test unit written to ") {
                findings.push(PathBuf::from(path.trim()));
            }
            log.push(line);
        }
        let status = child.wait().context("waiting for cargo fuzz run")?;
        let seconds = start.elapsed().as_secs_f64();
        Ok(Run {
            target: target.to_string(),
            succeeded: status.success(),
            executions,
            seconds,
            corpus_files: files(&self.corpus(target))?.len(),
            findings,
            log,
        })
    }

    /// `cargo xtask test`: replays every committed corpus and regression input of every target
    /// once, then fuzzes [`TEST_EXTRA_RUNS`] more inputs (new ones go to a scratch directory
    /// under `fuzz/target/`). Fails naming the target and the crashing input.
    pub(crate) fn replay_all(&self) -> Result<()> {
        self.build()?;
        let start = Instant::now();
        let (mut inputs, mut executions) = (0, 0);
        for target in targets(self.root)? {
            let (corpus, regressions) = (self.corpus(&target), self.regressions(&target));
            let replayed = files(&corpus)?.len() + files(&regressions)?.len();
            let scratch = self.root.join("fuzz/target/test-corpus").join(&target);
            let _ = fs::remove_dir_all(&scratch);
            fs::create_dir_all(&scratch)
                .with_context(|| format!("creating {}", scratch.display()))?;
            let runs = format!("-runs={}", replayed + TEST_EXTRA_RUNS);
            // libFuzzer refuses a corpus directory that does not exist (a new target).
            let corpora: Vec<&Path> = [&scratch, &corpus, &regressions]
                .into_iter()
                .map(PathBuf::as_path)
                .filter(|dir| dir.is_dir())
                .collect();
            let run = self.run(&target, &corpora, &[runs], false)?;
            if !run.succeeded {
                for line in &run.log {
                    eprintln!("{line}");
                }
                bail!("{}", run.failure());
            }
            eprintln!(
                "xtask: fuzz target {target}: {replayed} corpus and regression inputs replayed, \
                 {} executions in {:.1} s",
                run.executions.unwrap_or(0),
                run.seconds
            );
            inputs += replayed;
            executions += run.executions.unwrap_or(0);
        }
        eprintln!(
            "xtask: fuzz corpora: {inputs} inputs replayed, {executions} executions in {:.1} s",
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// `cargo xtask fuzz`: fuzzes each of `targets` for `seconds`, adding new inputs to its
    /// corpus and minimizing the corpus afterwards; prints a summary table and fails naming
    /// every crash input.
    pub(crate) fn fuzz_all(&self, targets: &[String], seconds: u64) -> Result<()> {
        self.build()?;
        let mut runs = Vec::new();
        for target in targets {
            eprintln!("xtask: fuzzing {target} for {seconds} s");
            let corpus = self.corpus(target);
            fs::create_dir_all(&corpus)
                .with_context(|| format!("creating {}", corpus.display()))?;
            // New inputs go to the corpus (the first directory); regressions are read only.
            let regressions = self.regressions(target);
            let mut corpora = vec![corpus.as_path()];
            if regressions.is_dir() {
                corpora.push(&regressions);
            }
            let limit = format!("-max_total_time={seconds}");
            let mut run = self.run(target, &corpora, &[limit], true)?;
            if run.succeeded {
                self.minimize(target)?;
                run.corpus_files = files(&corpus)?.len();
            }
            runs.push(run);
        }
        println!("{}", summary(&runs));
        let failures: Vec<String> = runs
            .iter()
            .filter(|run| !run.succeeded)
            .map(Run::failure)
            .collect();
        if !failures.is_empty() {
            bail!("{}", failures.join("\n"));
        }
        Ok(())
    }

    /// `cargo fuzz cmin`: keeps a small set of corpus inputs that reaches every edge the
    /// corpus reached (set-cover merge, hit counts ignored: the committed corpus stays at a
    /// few hundred files, and the test replays it quickly).
    fn minimize(&self, target: &str) -> Result<()> {
        let output = self
            .cargo_fuzz(&[
                "cmin",
                target,
                "--",
                "-set_cover_merge=1",
                "-use_counters=0",
            ])?
            .output()
            .context("starting cargo fuzz cmin")?;
        if !output.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&output.stderr));
            bail!("cargo fuzz cmin {target} failed with {}", output.status);
        }
        Ok(())
    }
}

/// What one libFuzzer run did.
struct Run {
    target: String,
    succeeded: bool,
    /// `stat::number_of_executed_units`, absent when libFuzzer did not get to print it.
    executions: Option<u64>,
    seconds: f64,
    corpus_files: usize,
    /// Inputs libFuzzer wrote to `fuzz/artifacts/<target>/` during the run (crash, leak,
    /// timeout, out-of-memory).
    findings: Vec<PathBuf>,
    log: Vec<String>,
}

impl Run {
    /// The error line of a failed run, naming the input to look at.
    fn failure(&self) -> String {
        match self.findings.as_slice() {
            [] => format!(
                "fuzz target {} failed without writing an input (build or start-up error; \
                 see its output above)",
                self.target
            ),
            findings => {
                let names: Vec<String> = findings
                    .iter()
                    .map(|path| path.display().to_string())
                    .collect();
                format!(
                    "fuzz target {} failed on {} (reproduce: cargo +nightly fuzz run {} {})",
                    self.target,
                    names.join(", "),
                    self.target,
                    names[0]
                )
            }
        }
    }
}

/// The markdown summary table of `cargo xtask fuzz`.
fn summary(runs: &[Run]) -> String {
    let mut table = String::from(
        "| target | runs | seconds | corpus files | findings |\n|---|---:|---:|---:|---:|\n",
    );
    for run in runs {
        let executions = run
            .executions
            .map_or_else(|| "?".to_string(), |count| count.to_string());
        table.push_str(&format!(
            "| {} | {executions} | {:.0} | {} | {} |\n",
            run.target,
            run.seconds,
            run.corpus_files,
            run.findings.len()
        ));
    }
    table
}

/// How to bring `fuzz/Cargo.lock` back in step: start from the workspace's lock and let cargo
/// drop what the fuzz workspace does not use and add what only it uses (libfuzzer-sys).
const SYNC_LOCKFILE: &str = "cp Cargo.lock fuzz/Cargo.lock && (cd fuzz && AYA_BUILD_SKIP=1 \
     cargo metadata --format-version 1 >/dev/null)";

/// Fails when a crate in both `Cargo.lock` and `fuzz/Cargo.lock` is locked at two different
/// semver-compatible versions (see [`lockfile_drift`]).
pub(crate) fn check_lockfiles(root: &Path) -> Result<()> {
    let read = |path: &Path| {
        fs::read_to_string(path).with_context(|| {
            format!(
                "reading {} (fuzz/Cargo.lock is committed; recreate it with: {SYNC_LOCKFILE})",
                path.display()
            )
        })
    };
    let workspace = read(&root.join("Cargo.lock"))?;
    let fuzz = read(&root.join("fuzz/Cargo.lock"))?;
    let drift = lockfile_drift(&workspace, &fuzz);
    if !drift.is_empty() {
        bail!(
            "fuzz/Cargo.lock is out of step with Cargo.lock: {}; regenerate it with: \
             {SYNC_LOCKFILE}",
            drift.join(", ")
        );
    }
    Ok(())
}

/// `(name, version)` of every `[[package]]` of a Cargo.lock.
fn locked_packages(lockfile: &str) -> Vec<(&str, &str)> {
    let mut packages = Vec::new();
    let mut name = None;
    for line in lockfile.lines() {
        let quoted = |key: &str| {
            line.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix(" = \""))
                .and_then(|rest| rest.strip_suffix('"'))
        };
        if line == "[[package]]" {
            name = None;
        } else if let Some(value) = quoted("name") {
            name = Some(value);
        } else if let (Some(value), Some(package)) = (quoted("version"), name) {
            packages.push((package, value));
            name = None;
        }
    }
    packages
}

/// The part of a version that semver compatibility keeps: the major version, or `0.minor`
/// (`0.0.patch`) below 1.0. Two versions of a crate with different keys are different APIs
/// that both lockfiles may well hold (`getrandom` 0.3 and 0.4), so they are not drift.
fn compatibility_key(version: &str) -> String {
    let mut parts = version.split(['.', '-', '+']);
    let (major, minor, patch) = (parts.next(), parts.next(), parts.next());
    match (major, minor) {
        (Some("0"), Some("0")) => format!("0.0.{}", patch.unwrap_or("")),
        (Some("0"), Some(minor)) => format!("0.{minor}"),
        _ => major.unwrap_or("").to_string(),
    }
}

/// "crate: fuzz/Cargo.lock has A, Cargo.lock has B" for every crate locked at semver-compatible
/// but different versions in the two lockfiles.
fn lockfile_drift(workspace: &str, fuzz: &str) -> Vec<String> {
    let workspace = locked_packages(workspace);
    let mut drift = Vec::new();
    for (name, version) in locked_packages(fuzz) {
        let key = compatibility_key(version);
        let ours = workspace
            .iter()
            .filter(|(other, _)| *other == name)
            .map(|(_, other_version)| *other_version)
            .filter(|other_version| compatibility_key(other_version) == key);
        let ours: Vec<&str> = ours.collect();
        if !ours.is_empty() && !ours.contains(&version) {
            drift.push(format!(
                "{name}: fuzz/Cargo.lock has {version}, Cargo.lock has {}",
                ours.join(" and ")
            ));
        }
    }
    drift
}

/// The files directly in `dir` (none if it does not exist).
fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("reading {}", dir.display())),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        if entry.file_type().is_ok_and(|kind| kind.is_file()) {
            found.push(entry.path());
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKSPACE: &str = "version = 4\n\n[[package]]\nname = \"getrandom\"\nversion = \"0.3.4\"\n\
        source = \"registry+x\"\n\n[[package]]\nname = \"syn\"\nversion = \"1.0.109\"\n\n\
        [[package]]\nname = \"syn\"\nversion = \"2.0.111\"\ndependencies = [\n \"quote\",\n]\n";

    /// The committed lockfiles themselves (also checked before every fuzz build).
    #[test]
    fn committed_lockfiles_are_in_step() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        check_lockfiles(root).unwrap();
    }

    #[test]
    fn lockfile_packages_are_read() {
        assert_eq!(
            locked_packages(WORKSPACE),
            [
                ("getrandom", "0.3.4"),
                ("syn", "1.0.109"),
                ("syn", "2.0.111")
            ]
        );
    }

    #[test]
    fn only_compatible_versions_that_differ_are_drift() {
        let fuzz = |packages: &[(&str, &str)]| {
            packages
                .iter()
                .map(|(name, version)| {
                    format!("[[package]]\nname = \"{name}\"\nversion = \"{version}\"\n\n")
                })
                .collect::<String>()
        };
        // Same versions, a crate only the fuzz workspace has, another major: in step.
        let same = fuzz(&[
            ("syn", "2.0.111"),
            ("libfuzzer-sys", "0.4.13"),
            ("getrandom", "0.4.3"),
        ]);
        assert_eq!(lockfile_drift(WORKSPACE, &same), Vec::<String>::new());
        let drifted = fuzz(&[("syn", "2.0.114"), ("getrandom", "0.3.3")]);
        assert_eq!(
            lockfile_drift(WORKSPACE, &drifted),
            [
                "syn: fuzz/Cargo.lock has 2.0.114, Cargo.lock has 2.0.111",
                "getrandom: fuzz/Cargo.lock has 0.3.3, Cargo.lock has 0.3.4"
            ]
        );
        assert_eq!(compatibility_key("0.0.7"), "0.0.7");
        assert_eq!(compatibility_key("1.2.3-rc.1"), "1");
    }
}
