//! The daemon as a child process in a namespace, and where cargo built it.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use crate::http::http;

/// Path of the daemon binary cargo built with the running test or bench executable.
///
/// `env!("CARGO_BIN_EXE_network-probe")` only exists inside the network-probe package's own
/// integration tests and benches, so the kit derives the path instead: cargo puts test and bench
/// executables in `<target>/<profile>/deps/` and the package's binaries, which it builds
/// whenever it builds an integration test or bench, one level up, in `<target>/<profile>/`.
/// The qemu guest of `cargo xtask kernel-test` copies both at their host paths, so the same
/// derivation holds there. Panics, naming the path, when the binary is not there.
pub fn daemon_path() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let exe = std::env::current_exe().expect("the running executable's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .unwrap_or_else(|| panic!("{} is not in <target>/<profile>/deps/", exe.display()));
        let daemon = profile_dir.join("network-probe");
        assert!(
            daemon.is_file(),
            "no daemon binary at {} (next to this executable's deps/ directory)",
            daemon.display()
        );
        daemon.into_os_string().into_string().expect("a UTF-8 path")
    })
}

pub use crate::slowdown::slowdown;

/// The daemon running in a namespace, killed on drop if still alive.
pub struct Daemon {
    pub child: Child,
    pub ns: String,
    pub listen: SocketAddr,
}

impl Daemon {
    /// Starts the daemon in `ns` listening on 127.0.0.1:9435 there, and waits (at most 20 s,
    /// times [`slowdown`]) until `/-/ready` answers 200. Its maps are not pinned unless `args` name a
    /// `--datapath.pin-path`.
    pub fn start(ns: &str, args: &[&str]) -> Daemon {
        Daemon::start_wrapped(ns, &[], args)
    }

    /// Like [`Daemon::start`], with `wrapper` (e.g. a setpriv command line) in front.
    pub fn start_wrapped(ns: &str, wrapper: &[&str], args: &[&str]) -> Daemon {
        Daemon::start_with_stderr(ns, wrapper, args, Stdio::inherit())
    }

    /// Like [`Daemon::start_wrapped`], with the daemon's standard error (its log) going to
    /// `stderr` (e.g. a file the test reads).
    pub fn start_with_stderr(
        ns: &str,
        wrapper: &[&str],
        args: &[&str],
        stderr: impl Into<Stdio>,
    ) -> Daemon {
        let listen: SocketAddr = "127.0.0.1:9435".parse().unwrap();
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns])
            .args(wrapper)
            .args([daemon_path(), "--web.listen-address", &listen.to_string()])
            .args(args)
            // Daemons of parallel tests must not share pinned maps (interface indexes repeat
            // across namespaces): no pinning unless the test asks for it.
            .args(
                (!args
                    .iter()
                    .any(|arg| arg.starts_with("--datapath.pin-path")))
                .then_some("--datapath.pin-path="),
            )
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = command.spawn().expect("starting the daemon");
        let mut daemon = Daemon {
            child,
            ns: ns.to_string(),
            listen,
        };
        let limit = Duration::from_secs(20) * slowdown();
        let deadline = Instant::now() + limit;
        loop {
            if let Ok((200, _)) = daemon.get("/-/ready") {
                return daemon;
            }
            if let Some(status) = daemon.child.try_wait().unwrap() {
                panic!("daemon exited during start-up: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready after {} s",
                limit.as_secs()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET `path` from the daemon: (status, body).
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http(&self.ns, self.listen, "GET", path)
    }

    /// GET the telemetry path and return the body, asserting 200.
    pub fn scrape(&self) -> String {
        let (status, body) = self.get("/metrics").expect("scrape");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Sends `signal` and waits (at most 10 s, times [`slowdown`]) for the exit status.
    pub fn stop(&mut self, signal: i32) -> ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let limit = Duration::from_secs(10) * slowdown();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon still running {} s after signal {signal}",
                limit.as_secs()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
