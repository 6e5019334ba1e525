//! A real headless browser (Debian's `chromium`) run inside a test namespace, and the folder
//! where tests leave what a person may want to look at after a run (screenshots, plots):
//! `target/test-artefacts/<suite>/`, kept after the run (each run overwrites its files).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

/// `target/test-artefacts/<suite>/`, created. Found from the test executable's path
/// (`target/<profile>/deps/<test>`), so it follows `CARGO_TARGET_DIR`.
pub fn artefacts(suite: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test executable lives in target/<profile>/deps/");
    let dir = target.join("test-artefacts").join(suite);
    fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("creating {}: {err}", dir.display()));
    dir
}

/// Headless chromium with a throw-away profile. Runs as root here, hence `--no-sandbox`
/// (chromium refuses to start its sandbox as root); it only loads the test's own pages.
pub struct Chromium {
    profile: PathBuf,
}

impl Default for Chromium {
    fn default() -> Self {
        Self::new()
    }
}

impl Chromium {
    /// Fails with what to do when Debian's chromium is not installed.
    pub fn new() -> Chromium {
        let found = Command::new("chromium").arg("--version").output();
        match found {
            Ok(output) if output.status.success() => {}
            other => panic!(
                "Debian's chromium is needed (`cargo xtask bootstrap --test-peers` installs it: \
                 apt-get install chromium): {other:?}"
            ),
        }
        let profile =
            std::env::temp_dir().join(format!("network-probe-chromium-{}", std::process::id()));
        let _ = fs::remove_dir_all(&profile);
        fs::create_dir_all(&profile).expect("creating the chromium profile dir");
        Chromium { profile }
    }

    fn run(&self, ns: &str, args: &[&str], url: &str) -> Output {
        let profile = format!("--user-data-dir={}", self.profile.display());
        let output = Command::new("timeout")
            .arg(Duration::from_secs(90).as_secs().to_string())
            .args([
                "ip",
                "netns",
                "exec",
                ns,
                "chromium",
                "--headless",
                "--no-sandbox",
            ])
            .args([
                "--disable-gpu",
                "--no-first-run",
                "--hide-scrollbars",
                &profile,
            ])
            .args(args)
            .arg(url)
            .output()
            .expect("starting chromium");
        assert!(
            output.status.success(),
            "chromium {args:?} {url} failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// The document as chromium built it after loading `url` in `ns` (`--dump-dom`).
    pub fn dom(&self, ns: &str, url: &str) -> String {
        String::from_utf8(self.run(ns, &["--dump-dom"], url).stdout).expect("UTF-8 DOM")
    }

    /// Loads `url` in `ns` and writes a PNG screenshot of `width`x`height` to `png`.
    pub fn screenshot(&self, ns: &str, url: &str, png: &Path, (width, height): (u32, u32)) {
        let _ = fs::remove_file(png);
        self.run(
            ns,
            &[
                &format!("--screenshot={}", png.display()),
                &format!("--window-size={width},{height}"),
            ],
            url,
        );
        let bytes = fs::read(png).unwrap_or_else(|err| panic!("{}: {err}", png.display()));
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 1000,
            "{} is not a PNG of a page",
            png.display()
        );
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.profile);
    }
}
