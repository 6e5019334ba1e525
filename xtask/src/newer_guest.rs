//! The second guest kernel of `cargo xtask kernel-test`: the newest kernel Debian ships for its
//! stable release, from `<codename>-backports` (6.12 when this was written: TCX, and
//! `ndo_hwtstamp_set/get` in place of the SIOCSHWTSTAMP ioctl), on which the guest suites of
//! [`crate::kernel_vm::NEWER_GUEST_TESTS`] run too (hwtstamp: the simulated NIC's other
//! configuration path).
//!
//! Prepared once into `~/.cache/network-probe/guest-backports/` without touching the machine's
//! apt configuration or installed packages: a private package list (`apt/`, the system's own
//! Debian mirror with the backports suite), `apt-get download` of `linux-image-<abi>`,
//! `linux-headers-<abi>` and the two packages those headers need (`-common`, `linux-kbuild-`),
//! unpacked with `dpkg-deb -x`; kept: `vmlinuz`, the module tree the guest loads (the same
//! [`crate::bootstrap::GUEST_MODULES`] with their dependencies, depmod's index) and the
//! unpacked headers (`headers/`, about 75 MB) that testing/hwtstamp-veth is built against with
//! Kbuild's `O=` (Debian's `linux-headers-<abi>/Makefile` names the common tree by its
//! installed path, which this unpacked copy does not have). Needs `pahole` (Debian `dwarves`)
//! for the module's BTF. Measured: the downloads 123 MB (about 4 s here), unpacking and indexing
//! a few seconds.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// A prepared guest kernel.
pub(crate) struct NewerGuest {
    pub dir: PathBuf,
    pub abi: String,
    /// The unpacked headers: Kbuild's source tree (`-common`) and object tree (`<abi>`).
    pub source_tree: PathBuf,
    pub object_tree: PathBuf,
}

const STAMP: &str = "prepared.stamp";

/// Prepares (or finds prepared) the backports guest kernel.
pub(crate) fn prepare() -> Result<NewerGuest> {
    let dir = crate::bootstrap::cache_dir().join("guest-backports");
    let stamp = crate::bootstrap::guest_modules_stamp();
    if let Ok(abi) = fs::read_to_string(dir.join("abi"))
        && dir.join("vmlinuz").is_file()
        && fs::read_to_string(dir.join(STAMP)).is_ok_and(|prepared| prepared == stamp)
    {
        let guest = trees(&dir, abi.trim())?;
        if guest.source_tree.join("Makefile").is_file() {
            return Ok(guest);
        }
    }
    if Command::new("pahole").arg("--version").output().is_err() {
        // Kbuild runs pahole for the module's BTF (the kernel has CONFIG_DEBUG_INFO_BTF_MODULES).
        let mut command = Command::new("apt-get");
        command
            .args(["install", "-y", "-qq", "--no-install-recommends", "dwarves"])
            .env("DEBIAN_FRONTEND", "noninteractive");
        status(command, "apt-get", &["install", "dwarves"])?;
    }
    let apt = Apt::new(&dir.join("apt"))?;
    apt.run("apt-get", &["update", "-qq"])?;
    let depends = |package: &str| -> Result<Vec<String>> {
        let text = apt.capture("apt-cache", &["depends", package])?;
        Ok(text
            .lines()
            .filter_map(|line| line.trim().strip_prefix("Depends: "))
            .map(str::to_string)
            .collect())
    };
    let abi = depends("linux-image-amd64")?
        .into_iter()
        .find_map(|name| name.strip_prefix("linux-image-").map(str::to_string))
        .context("the backports suite's linux-image-amd64 names no linux-image-<abi>")?;
    let headers = format!("linux-headers-{abi}");
    let mut packages = vec![format!("linux-image-{abi}"), headers.clone()];
    packages.extend(depends(&headers)?.into_iter().filter(|name| {
        name.starts_with("linux-headers-") && name.ends_with("-common")
            || name.starts_with("linux-kbuild-")
    }));
    eprintln!(
        "xtask: preparing the second test guest, kernel {abi} (backports): {}",
        packages.join(" ")
    );
    let work = dir.join("work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let mut args = vec!["download"];
    args.extend(packages.iter().map(String::as_str));
    apt.run_in("apt-get", &args, &work)?;
    let root = work.join("root");
    for entry in fs::read_dir(&work)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "deb") {
            run(
                "dpkg-deb",
                &["-x", &path.to_string_lossy(), &root.to_string_lossy()],
            )?;
        }
    }
    let modules = dir.join("modules");
    let _ = fs::remove_dir_all(&modules);
    module_tree(&root, &modules, &abi)?;
    fs::copy(
        root.join(format!("boot/vmlinuz-{abi}")),
        dir.join("vmlinuz"),
    )
    .context("copying the image's vmlinuz")?;
    // The headers are what is left worth keeping: /usr/src and /usr/lib/linux-kbuild-*.
    let kept = dir.join("headers");
    let _ = fs::remove_dir_all(&kept);
    fs::rename(root.join("usr"), &kept).context("keeping the unpacked headers")?;
    fs::remove_dir_all(&work)?;
    fs::write(dir.join("abi"), format!("{abi}\n"))?;
    fs::write(dir.join(STAMP), stamp)?;
    let guest = trees(&dir, &abi)?;
    if !guest.source_tree.join("Makefile").is_file() {
        bail!("{} has no Makefile", guest.source_tree.display());
    }
    Ok(guest)
}

/// The Kbuild trees of `abi` in the prepared `dir`: the object tree is the headers package's
/// directory, the source tree the `-common` one its Makefile includes.
fn trees(dir: &Path, abi: &str) -> Result<NewerGuest> {
    let object_tree = dir.join("headers/src").join(format!("linux-headers-{abi}"));
    let makefile = fs::read_to_string(object_tree.join("Makefile"))
        .with_context(|| format!("reading {}/Makefile", object_tree.display()))?;
    let common = makefile
        .lines()
        .find_map(|line| line.strip_prefix("include "))
        .and_then(|path| {
            Path::new(path.trim())
                .parent()?
                .file_name()
                .map(PathBuf::from)
        })
        .context("the headers' Makefile includes no common tree")?;
    Ok(NewerGuest {
        dir: dir.to_path_buf(),
        abi: abi.to_string(),
        source_tree: dir.join("headers/src").join(common),
        object_tree,
    })
}

/// apt with a private source list and package lists: the system's Debian mirror, the
/// backports suite of the system's release.
struct Apt {
    options: Vec<String>,
}

impl Apt {
    fn new(dir: &Path) -> Result<Apt> {
        fs::create_dir_all(dir.join("lists/partial"))?;
        let (mirror, codename) = system_mirror()?;
        let sources = dir.join("sources.list");
        fs::write(
            &sources,
            format!("deb {mirror} {codename}-backports main\n"),
        )?;
        Ok(Apt {
            options: vec![
                format!("Dir::Etc::sourcelist={}", sources.display()),
                "Dir::Etc::sourceparts=-".into(),
                format!("Dir::State::Lists={}", dir.join("lists").display()),
            ],
        })
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new(program);
        for option in &self.options {
            command.args(["-o", option]);
        }
        command.args(args).env_remove("RUSTUP_TOOLCHAIN");
        command
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<()> {
        status(self.command(program, args), program, args)
    }

    fn run_in(&self, program: &str, args: &[&str], dir: &Path) -> Result<()> {
        let mut command = self.command(program, args);
        command.current_dir(dir);
        status(command, program, args)
    }

    fn capture(&self, program: &str, args: &[&str]) -> Result<String> {
        let output = self
            .command(program, args)
            .output()
            .with_context(|| format!("starting {program}"))?;
        if !output.status.success() {
            bail!(
                "{program} {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

fn status(mut command: Command, program: &str, args: &[&str]) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {program}"))?;
    if !status.success() {
        bail!("{program} {} failed with {status}", args.join(" "));
    }
    Ok(())
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let mut command = Command::new(program);
    command.args(args);
    status(command, program, args)
}

/// The guest's module tree in `modules`: the unpacked image's (`root`) modules of
/// [`crate::bootstrap::GUEST_MODULES`] with their dependencies, and depmod's index.
fn module_tree(root: &Path, modules: &Path, abi: &str) -> Result<()> {
    let kernel_modules = format!("lib/modules/{abi}");
    // The image's .deb has no modules.dep: index the unpacked tree first.
    run("depmod", &["-b", &root.to_string_lossy(), abi])?;
    let dep_path = root.join(&kernel_modules).join("modules.dep");
    let dep =
        fs::read_to_string(&dep_path).with_context(|| format!("reading {}", dep_path.display()))?;
    let mut files = crate::bootstrap::module_closure(&dep, crate::bootstrap::GUEST_MODULES)?;
    files.extend(["modules.builtin", "modules.builtin.modinfo"].map(String::from));
    for relative in files {
        let from = root.join(&kernel_modules).join(&relative);
        let to = modules.join(&kernel_modules).join(&relative);
        fs::create_dir_all(to.parent().expect("a parent"))?;
        fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    fs::write(modules.join(&kernel_modules).join("modules.order"), "")?;
    run("depmod", &["-b", &modules.to_string_lossy(), abi])
}

/// The Debian mirror the system's apt uses for its release (a deb822 stanza of a `.sources`
/// file, or a `deb URI SUITE` line of a `.list`, whose suite is the release's codename; files
/// apt ignores, such as `*.disabled`, are skipped) and that codename (`/etc/os-release`).
fn system_mirror() -> Result<(String, String)> {
    let os_release = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    let codename = os_release
        .lines()
        .find_map(|line| line.strip_prefix("VERSION_CODENAME="))
        .map(|name| name.trim_matches('"').to_string())
        .filter(|name| !name.is_empty())
        .context("/etc/os-release names no VERSION_CODENAME")?;
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut listed: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
        listed.sort();
        files.extend(listed);
    }
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        let name = file.to_string_lossy();
        let found = if name.ends_with(".sources") {
            mirror_in_deb822(&text, &codename)
        } else if name.ends_with(".list") {
            mirror_in_one_line(&text, &codename)
        } else {
            None
        };
        if let Some(mirror) = found {
            return Ok((mirror, codename));
        }
    }
    bail!("no apt source of the system names suite {codename}")
}

fn mirror_in_deb822(text: &str, codename: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .unwrap_or_default()
        };
        field("Suites")
            .split_whitespace()
            .any(|suite| suite == codename)
            .then(|| field("URIs").split_whitespace().next().map(str::to_string))
            .flatten()
    })
}

fn mirror_in_one_line(text: &str, codename: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut words = line
            .split_whitespace()
            .filter(|word| !word.starts_with('['));
        if words.next() != Some("deb") {
            return None;
        }
        let uri = words.next()?;
        (words.next() == Some(codename)).then(|| uri.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_release_mirror_among_sources() {
        let deb822 = "Types: deb\nURIs: https://example.org/other\nSuites: nodistro\n\n\
                      Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n\
                      Components: main\n";
        assert_eq!(
            mirror_in_deb822(deb822, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(mirror_in_deb822(deb822, "trixie"), None);
        let list = "deb [arch=amd64] https://example.org/x nodistro main\n\
                    deb http://mirror.example/debian bookworm main\n";
        assert_eq!(
            mirror_in_one_line(list, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
    }
}
