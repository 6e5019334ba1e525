//! The daemon's directory in bpffs (`--datapath.pin-path`, default `/sys/fs/bpf/network-probe`):
//! the kernel maps are pinned there so a restart or an upgrade of the daemon carries on counting
//! where the last run stopped, even after a SIGKILL.
//!
//! Maps live in `<pin-path>/maps-v<MAP_LAYOUT_VERSION>/<MAP NAME>`. Before the object is loaded,
//! [`prepare`] decides for every map whether its pinned copy can be reused: a directory of
//! another layout version is removed (its maps would be misread), and a pinned map whose type,
//! key size, value size or capacity differs from what this run wants is unpinned so a fresh one
//! is created. What was decided is logged and exported (`network_probe_datapath_map_origin`).
//!
//! The TC programs a run loads are pinned in `<pin-path>/programs/<PROGRAM NAME>` (replacing
//! what the previous run pinned there, see [`pin_program`]): the ids of the programs pinned at
//! start ([`pinned_program_ids`]) are those of the previous run, whose cls_bpf filters a killed
//! run leaves behind and the next one removes (see [`crate::kernel::stale_filters`]). Reading a
//! pin's id needs no capability beyond access to the directory, unlike looking a program up by
//! id (CAP_SYS_ADMIN, which the daemon does not hold).

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapInfo, MapType},
    programs::{ProgramInfo, SchedClassifier},
};
use log::{info, warn};
use network_probe_common::MAP_LAYOUT_VERSION;

use crate::error::{Error, Result};

/// Default `--datapath.pin-path`.
pub(crate) const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/network-probe";

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// A map this run wants, as the kernel would describe it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WantedMap {
    pub name: &'static str,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// Where a map's contents come from in this run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapOrigin {
    /// Not pinned: the map lives as long as the process (`--datapath.pin-path=""`).
    Unpinned,
    /// Nothing was pinned: a fresh map, pinned now.
    Created,
    /// The pinned map of an earlier run: counters continue.
    Reused,
    /// A pinned map existed but could not be reused (another layout version, type, key or value
    /// size, or capacity): it was discarded and a fresh one pinned.
    Recreated,
}

impl MapOrigin {
    pub const ALL: [MapOrigin; 4] = [
        MapOrigin::Unpinned,
        MapOrigin::Created,
        MapOrigin::Reused,
        MapOrigin::Recreated,
    ];

    /// Label value in metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            MapOrigin::Unpinned => "unpinned",
            MapOrigin::Created => "created",
            MapOrigin::Reused => "reused",
            MapOrigin::Recreated => "recreated",
        }
    }
}

/// What [`prepare`] decided.
#[derive(Clone, Debug)]
pub(crate) struct PinPlan {
    /// Directory of this layout version's maps.
    pub dir: PathBuf,
    /// Origin of every wanted map, in the order given.
    pub origins: Vec<(&'static str, MapOrigin)>,
}

impl PinPlan {
    /// Pin path of the map named `name`.
    pub(crate) fn map_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Directory of the pinned programs under the pin path (no layout version: a program is
/// identified by its kernel id, whatever maps it uses).
pub(crate) const PROGRAMS_DIR: &str = "programs";

/// Kernel ids of the programs pinned in `dir` (`<pin-path>/programs`), by pin name. A pin that
/// cannot be read is logged and skipped; no directory means none.
pub(crate) fn pinned_program_ids(dir: &Path) -> Vec<(String, u32)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        match ProgramInfo::from_pin(entry.path()) {
            Ok(info) => ids.push((name, info.id())),
            Err(err) => warn!(
                "reading the pinned program {}: {err}",
                entry.path().display()
            ),
        }
    }
    ids.sort();
    ids
}

/// Pins `program` as `dir/name` (creating `dir`), replacing what is pinned there in one rename,
/// so the path always names a program: the previous run's until this one's takes its place.
pub(crate) fn pin_program(program: &mut SchedClassifier, dir: &Path, name: &str) -> Result<()> {
    create_dir(dir)?;
    let path = dir.join(name);
    // bpffs refuses names with a dot.
    let temporary = dir.join(format!("pending-{name}"));
    match fs::remove_file(&temporary) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => {
            return Err(pin_error(&temporary, "unpinning", &err.to_string()));
        }
        _ => {}
    }
    program
        .pin(&temporary)
        .map_err(|err| pin_error(&temporary, "pinning the program", &err.to_string()))?;
    fs::rename(&temporary, &path).map_err(|err| pin_error(&path, "pinning", &err.to_string()))
}

/// Directory name for a layout version.
pub(crate) fn layout_dir_name(version: u32) -> String {
    format!("maps-v{version}")
}

/// Why a pinned map cannot be reused, or `None` when it can.
pub(crate) fn mismatch(wanted: &WantedMap, found: &MapDescription) -> Option<String> {
    let mut differences = Vec::new();
    if found.map_type != Some(wanted.map_type) {
        differences.push(format!(
            "type {} (want {:?})",
            found
                .map_type
                .map_or_else(|| "unknown".to_string(), |t| format!("{t:?}")),
            wanted.map_type
        ));
    }
    for (what, have, want) in [
        ("key size", found.key_size, wanted.key_size),
        ("value size", found.value_size, wanted.value_size),
        ("capacity", found.max_entries, wanted.max_entries),
    ] {
        if have != want {
            differences.push(format!("{what} {have} (want {want})"));
        }
    }
    (!differences.is_empty()).then(|| differences.join(", "))
}

/// What the kernel says about a pinned map.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct MapDescription {
    pub map_type: Option<MapType>,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl fmt::Display for MapDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} key {} value {} entries {}",
            self.map_type, self.key_size, self.value_size, self.max_entries
        )
    }
}

/// Checks `root` is on bpffs, removes maps pinned by other layout versions, and decides for
/// every wanted map whether its pinned copy is reused (see the module documentation).
pub(crate) fn prepare(root: &Path, wanted: &[WantedMap]) -> Result<PinPlan> {
    ensure_bpffs(root)?;
    let current = layout_dir_name(MAP_LAYOUT_VERSION);
    let mut discarded_layout = false;
    let entries = fs::read_dir(root).map_err(|err| pin_error(root, "listing", &err.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|err| pin_error(root, "listing", &err.to_string()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == current || !name.starts_with("maps-v") {
            continue;
        }
        warn!(
            "{} holds maps of layout {name}, this build uses {current}: discarding them, \
             counters start from zero",
            root.display()
        );
        remove_pinned_dir(&entry.path())?;
        discarded_layout = true;
    }
    let dir = root.join(&current);
    create_dir(&dir)?;
    let mut origins = Vec::new();
    for map in wanted {
        let path = dir.join(map.name);
        let origin = match describe(&path) {
            Ok(None) if discarded_layout => MapOrigin::Recreated,
            Ok(None) => MapOrigin::Created,
            Ok(Some(found)) => match mismatch(map, &found) {
                None => MapOrigin::Reused,
                Some(why) => {
                    warn!(
                        "pinned map {} cannot be reused ({why}): replacing it, its counters \
                         start from zero",
                        path.display()
                    );
                    remove_file(&path)?;
                    MapOrigin::Recreated
                }
            },
            Err(err) => {
                return Err(pin_error(&path, "reading the pinned map", &err));
            }
        };
        info!("map {}: {} ({})", map.name, origin.as_str(), path.display());
        origins.push((map.name, origin));
    }
    Ok(PinPlan { dir, origins })
}

/// The kernel's description of the map pinned at `path`, `None` if nothing is pinned there.
fn describe(path: &Path) -> std::result::Result<Option<MapDescription>, String> {
    match fs::symlink_metadata(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err.to_string()),
        Ok(_) => {}
    }
    let info = MapInfo::from_pin(path).map_err(|err| err.to_string())?;
    Ok(Some(MapDescription {
        map_type: info.map_type().ok(),
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    }))
}

/// Fails unless `root` (or, when it does not exist yet, its parent) is on bpffs; creates it.
fn ensure_bpffs(root: &Path) -> Result<()> {
    check_location(root)?;
    create_dir(root)
}

/// Fails unless `root` (or, when it does not exist yet, its parent) is on bpffs, with an error
/// that says how to fix it. Creates nothing (`network-probe check` asks this too).
pub(crate) fn check_location(root: &Path) -> Result<()> {
    let probe = if root.exists() {
        root
    } else {
        root.parent().unwrap_or(root)
    };
    let magic = statfs_magic(probe).map_err(|err| pin_error(probe, "statfs", &err.to_string()))?;
    if magic != BPF_FS_MAGIC {
        return Err(Error::Other(format!(
            "--datapath.pin-path {}: {} is not on bpffs (mount it with `mount -t bpf bpf \
             /sys/fs/bpf`, or pass --datapath.pin-path=\"\" to keep the maps only while the \
             daemon runs)",
            root.display(),
            probe.display()
        )));
    }
    Ok(())
}

fn statfs_magic(path: &Path) -> io::Result<i64> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
    // SAFETY: statfs is plain data; the kernel fills it or fails.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out pointer.
    if unsafe { libc::statfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between architectures.
    Ok(stat.f_type as i64)
}

fn create_dir(dir: &Path) -> Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(pin_error(dir, "creating", &err.to_string())),
    }
}

fn remove_file(path: &Path) -> Result<()> {
    fs::remove_file(path).map_err(|err| pin_error(path, "unpinning", &err.to_string()))
}

/// Unpins everything in `dir` (bpffs holds only pins and directories) and removes it.
fn remove_pinned_dir(dir: &Path) -> Result<()> {
    fs::remove_dir_all(dir).map_err(|err| pin_error(dir, "removing", &err.to_string()))
}

fn pin_error(path: &Path, action: &str, err: &str) -> Error {
    Error::Other(format!(
        "--datapath.pin-path: {action} {}: {err}",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOWS: WantedMap = WantedMap {
        name: "FLOWS",
        map_type: MapType::LruHash,
        key_size: 44,
        value_size: 96,
        max_entries: 65_536,
    };

    fn found(map_type: MapType, key: u32, value: u32, entries: u32) -> MapDescription {
        MapDescription {
            map_type: Some(map_type),
            key_size: key,
            value_size: value,
            max_entries: entries,
        }
    }

    #[test]
    fn identical_maps_are_reused() {
        assert_eq!(
            mismatch(&FLOWS, &found(MapType::LruHash, 44, 96, 65_536)),
            None
        );
    }

    #[test]
    fn every_difference_is_named() {
        assert_eq!(
            mismatch(&FLOWS, &found(MapType::LruHash, 44, 96, 1024)).unwrap(),
            "capacity 1024 (want 65536)"
        );
        assert_eq!(
            mismatch(&FLOWS, &found(MapType::Hash, 40, 88, 65_536)).unwrap(),
            "type Hash (want LruHash), key size 40 (want 44), value size 88 (want 96)"
        );
        let unknown = MapDescription {
            map_type: None,
            ..found(MapType::LruHash, 44, 96, 65_536)
        };
        assert!(
            mismatch(&FLOWS, &unknown)
                .unwrap()
                .starts_with("type unknown")
        );
    }

    #[test]
    fn layout_directories_carry_the_version() {
        assert_eq!(layout_dir_name(1), "maps-v1");
        assert_eq!(
            layout_dir_name(MAP_LAYOUT_VERSION),
            format!("maps-v{MAP_LAYOUT_VERSION}")
        );
    }

    #[test]
    fn a_path_outside_bpffs_is_refused_with_the_way_out() {
        let err = prepare(Path::new("/tmp/network-probe-not-bpffs"), &[FLOWS]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("is not on bpffs"), "{text}");
        assert!(text.contains("--datapath.pin-path=\"\""), "{text}");
        assert!(!Path::new("/tmp/network-probe-not-bpffs").exists());
    }
}
