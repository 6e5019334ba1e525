//! The Jool test guest: Debian's stable kernel with Jool 4.1.9 (built by jool-dkms, prepared by
//! `cargo xtask bootstrap --test-peers` into `~/.cache/network-probe/jool/`) booted under qemu
//! (TCG: KVM is unusable on the build machines) with a busybox initramfs holding the `jool`
//! CLIs, a guest program (this test or bench executable itself) and a shell `/init`.
//! Shared by tests/integration/jool.rs and benches/jool.rs.
//!
//! The guest prints everything on its serial console between `@@BEGIN <name>` and `@@END`
//! lines; [`Boot::section`] returns one of them.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// Where the bootstrap leaves the kernel and modules.
pub fn artefacts() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("network-probe/jool")
}

/// Removes the staging directory even when the test fails.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// What a boot printed.
pub struct Boot {
    pub console: String,
    pub wall: Duration,
}

impl Boot {
    /// The lines between `@@BEGIN name` and the next `@@END`, without kernel messages (which
    /// may interleave). The first marker may follow the firmware's terminal escapes.
    pub fn section(&self, name: &str) -> Option<String> {
        let begin = format!("@@BEGIN {name}");
        let mut lines = self.console.lines().map(|l| l.trim_end_matches('\r'));
        lines.by_ref().find(|line| line.ends_with(&begin))?;
        let mut out = String::new();
        for line in lines.filter(|line| !is_kernel_message(line)) {
            if line == "@@END" {
                return Some(out);
            }
            out.push_str(line);
            out.push('\n');
        }
        None
    }
}

/// A printk line on the console: `[    5.586926] …`.
fn is_kernel_message(line: &str) -> bool {
    line.strip_prefix('[')
        .and_then(|rest| rest.split_once("] "))
        .is_some_and(|(stamp, _)| {
            let stamp = stamp.trim_start();
            !stamp.is_empty() && stamp.chars().all(|c| c.is_ascii_digit() || c == '.')
        })
}

/// Copies `binary` and the shared libraries `ldd` lists for it into `root`, at their paths.
fn install_with_libraries(root: &Path, binary: &Path, at: &str) {
    copy_file(binary, &root.join(at.trim_start_matches('/')));
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .expect("running ldd");
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            copy_file(Path::new(path), &root.join(path.trim_start_matches('/')));
        }
    }
}

fn copy_file(from: &Path, to: &Path) {
    fs::create_dir_all(to.parent().unwrap()).unwrap();
    fs::copy(from, to).unwrap_or_else(|err| panic!("copying {}: {err}", from.display()));
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Boots the guest with `init` (a busybox sh script) and `guest` installed as `/bin/guest`;
/// returns the console once the guest powers off (or after `limit`).
pub fn boot(init: &str, guest: &Path, limit: Duration) -> Boot {
    let cache = artefacts();
    let abi = fs::read_to_string(cache.join("abi")).unwrap_or_else(|_| {
        panic!(
            "{} has no Jool guest kernel; run `cargo xtask bootstrap --test-peers` (or `cargo \
             xtask test`), which builds it",
            cache.display()
        )
    });
    let abi = abi.trim();
    let staging = TempDir(std::env::temp_dir().join(format!(
        "network-probe-jool-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    )));
    let root = staging.0.join("root");
    for dir in [
        "bin", "sbin", "usr/bin", "proc", "sys", "dev", "etc", "tmp", "root",
    ] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    copy_file(Path::new("/bin/busybox"), &root.join("bin/busybox"));
    install_with_libraries(&root, Path::new("/usr/bin/jool"), "/usr/bin/jool");
    install_with_libraries(&root, Path::new("/usr/bin/jool_siit"), "/usr/bin/jool_siit");
    install_with_libraries(&root, guest, "/bin/guest");
    copy_tree(&cache.join("modules/lib"), &root.join("lib"));
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    )
    .unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    let init_path = root.join("init");
    fs::write(&init_path, init).unwrap();
    let chmod = Command::new("chmod")
        .args(["0755"])
        .arg(&init_path)
        .status()
        .unwrap();
    assert!(chmod.success());
    let initrd = staging.0.join("initrd.gz");
    let packed = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
            root.display(),
            initrd.display()
        ))
        .status()
        .expect("running cpio");
    assert!(packed.success(), "packing the initramfs failed");

    let started = Instant::now();
    let output = Command::new("timeout")
        .arg(limit.as_secs().to_string())
        .args([
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "1024",
        ])
        .args(["-smp", "2", "-nographic", "-no-reboot", "-kernel"])
        .arg(cache.join("vmlinuz"))
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            &format!("console=ttyS0 panic=-1 loglevel=1 quiet rdinit=/init abi={abi}"),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("starting qemu-system-x86_64 (installed by the bootstrap)");
    let console = String::from_utf8_lossy(&output.stdout).into_owned();
    Boot {
        console,
        wall: started.elapsed(),
    }
}

/// Prefix of every guest `/init`: busybox applets, pseudo file systems, loopback.
pub const INIT_PRELUDE: &str = "#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ip link set lo up
";

/// Suffix of every guest `/init`.
pub const INIT_END: &str = "echo @@DONE
poweroff -f
";
