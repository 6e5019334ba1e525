//! Private bpffs instances, so no test pins anything under the host's /sys/fs/bpf.

use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::command::sh;

/// A private bpffs instance mounted under /run for one test (unmounted, with everything pinned
/// in it, on drop), so nothing is pinned under the host's /sys/fs/bpf.
pub struct Bpffs {
    pub mount: PathBuf,
}

// `new` mounts / creates kernel objects: not a `Default` value.
#[expect(clippy::new_without_default)]
impl Bpffs {
    pub fn new() -> Bpffs {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let mount = PathBuf::from(format!(
            "/run/network-probe-test-bpffs-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&mount).unwrap();
        sh("mount", &["-t", "bpf", "bpf", mount.to_str().unwrap()]);
        Bpffs { mount }
    }

    /// The daemon's pin directory inside this instance.
    pub fn pin_path(&self) -> PathBuf {
        self.mount.join("network-probe")
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = std::fs::remove_dir(&self.mount);
    }
}
