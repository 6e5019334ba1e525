//! The state file (`--datapath.state-file`): the half of the counters that lives in user space.
//!
//! The pinned kernel maps keep what is still in them across a restart; what user space folded
//! out of them (flows gone idle or evicted, series folded into `other` rows, interfaces deleted)
//! exists only in the daemon. This file carries that part over: it is rewritten atomically
//! (temporary file, then rename) whenever it changes, before the flows it folded are deleted
//! from the kernel map, and at shutdown. It names the kernel ids of the maps it belongs to, so
//! it is only restored on top of those very maps (same boot, same pinned maps); anything else
//! (fresh maps, another layout, a damaged file) starts the user-space part from zero, logged and
//! exported, never misread.
//!
//! The file has two parts, restored separately and reported per part ([`Restored`],
//! `network_probe_datapath_state_part_restored{part}`): `interfaces` (the totals of deleted
//! interfaces and the names of the interface indexes seen) and `flows` (the flow table's series
//! and counters, which only fit a run with the same `--flows.labels`). A file that cannot be
//! decoded (damaged, or of another format) is kept aside as `<file>.corrupt-<unix seconds>`
//! ([`keep_aside`]) before the next save overwrites its path, so nothing is lost that someone
//! might want to look at.

use std::{
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use network_probe_common::FlowKey;
use serde::{Deserialize, Serialize};

use crate::{flows::table::FlowTableState, kernel::datapath::DatapathTotals};

/// Default `--datapath.state-file`.
pub(crate) const DEFAULT_STATE_FILE: &str = "/var/lib/network-probe/state.json";

/// Version of the file's own format.
const FORMAT: u32 = 1;

/// Everything the file holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedState {
    pub format: u32,
    /// Kernel ids of the pinned maps this state completes, by map name.
    pub map_ids: Vec<(String, u32)>,
    pub datapath: DatapathTotals,
    pub flows: FlowTableState,
    /// Flows already folded into `flows` whose deletion from the kernel map may not have
    /// happened (the daemon died in between): deleted at restore so they are not counted twice,
    /// unless the entry found then began after `saved_at_ns` (a new connection, same ports).
    pub pending_deletes: Vec<FlowKey>,
    /// CLOCK_MONOTONIC when this was saved.
    pub saved_at_ns: u64,
}

impl SavedState {
    pub(crate) fn new(
        map_ids: Vec<(String, u32)>,
        datapath: DatapathTotals,
        flows: FlowTableState,
        pending_deletes: Vec<FlowKey>,
        saved_at_ns: u64,
    ) -> Self {
        SavedState {
            format: FORMAT,
            map_ids,
            datapath,
            flows,
            pending_deletes,
            saved_at_ns,
        }
    }
}

/// Decodes a state file's bytes; the error names what is wrong.
pub(crate) fn decode(bytes: &[u8]) -> Result<SavedState, String> {
    let state: SavedState = serde_json::from_slice(bytes).map_err(|err| err.to_string())?;
    if state.format != FORMAT {
        return Err(format!(
            "format {} (this build reads {FORMAT})",
            state.format
        ));
    }
    Ok(state)
}

/// Whether `state` belongs to the maps with `map_ids` (an empty list never matches).
pub(crate) fn belongs_to(state: &SavedState, map_ids: &[(String, u32)]) -> bool {
    !map_ids.is_empty() && state.map_ids == map_ids
}

/// Why the state file could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LoadError {
    /// It could not be read (permissions, I/O): left alone.
    Read(String),
    /// It was read but does not decode (damaged, or another format): to be kept aside.
    Damaged(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Read(err) | LoadError::Damaged(err) => f.write_str(err),
        }
    }
}

/// Reads the state file: `Ok(None)` when there is none.
pub(crate) fn load(path: &Path) -> Result<Option<SavedState>, LoadError> {
    match fs::read(path) {
        Ok(bytes) => decode(&bytes)
            .map(Some)
            .map_err(|err| LoadError::Damaged(format!("{}: {err}", path.display()))),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(LoadError::Read(format!(
            "reading {}: {err}",
            path.display()
        ))),
    }
}

/// What the restore at start took over from the state file, part by part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// The totals of deleted interfaces and the names of the interface indexes seen.
    pub interfaces: bool,
    /// The flow table's series and counters.
    pub flows: bool,
}

impl Restored {
    /// Label values of the parts, in the order of [`Restored::parts`].
    pub const PARTS: [&'static str; 2] = ["interfaces", "flows"];

    /// Whether each part was restored, by label value.
    pub fn parts(&self) -> [(&'static str, bool); 2] {
        [
            (Self::PARTS[0], self.interfaces),
            (Self::PARTS[1], self.flows),
        ]
    }

    /// Whether every part was restored.
    pub fn all(&self) -> bool {
        self.interfaces && self.flows
    }
}

/// Where a damaged state file at `path` is kept aside at `unix_seconds`:
/// `<file>.corrupt-<unix_seconds>`.
pub(crate) fn corrupt_path(path: &Path, unix_seconds: u64) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".corrupt-{unix_seconds}"));
    path.with_file_name(name)
}

/// Moves the damaged state file at `path` aside (see [`corrupt_path`]; should that name be
/// taken, `-1`, `-2`, ... is appended) and returns where it went. A rename: the bytes are
/// kept as they were, and the next save writes a fresh file at `path`.
pub(crate) fn keep_aside(path: &Path, unix_seconds: u64) -> io::Result<PathBuf> {
    let first = corrupt_path(path, unix_seconds);
    let mut aside = first.clone();
    let mut suffix = 0;
    while fs::symlink_metadata(&aside).is_ok() {
        suffix += 1;
        let mut name = first.file_name().unwrap_or_default().to_os_string();
        name.push(format!("-{suffix}"));
        aside = first.with_file_name(name);
    }
    fs::rename(path, &aside)?;
    Ok(aside)
}

/// Writes `state` to `path` atomically: a reader (the next start) sees the old or the new file,
/// never a torn one, even if the daemon is killed meanwhile. No fsync: what it protects against
/// (a kernel crash, a power cut) also empties the pinned maps, and the file is then discarded.
pub(crate) fn save(path: &Path, state: &SavedState) -> io::Result<()> {
    let bytes = serde_json::to_vec(state).map_err(io::Error::other)?;
    let temporary = temporary_path(path);
    fs::File::create(&temporary)?.write_all(&bytes)?;
    fs::rename(&temporary, path)
}

/// Creates the directory of `path` if needed (the systemd unit's StateDirectory does it in
/// production).
pub(crate) fn prepare_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => fs::create_dir_all(dir),
        _ => Ok(()),
    }
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::table::FlowTableStats;

    fn sample() -> SavedState {
        SavedState::new(
            vec![("DEVICE_STATS".into(), 7), ("FLOWS".into(), 8)],
            DatapathTotals {
                retired: vec![(
                    "eth0".into(),
                    0,
                    network_probe_common::DeviceStats {
                        packets: 3,
                        ..Default::default()
                    },
                )],
                seen_names: vec![(2, "eth0".into())],
            },
            FlowTableState {
                labels: "interface,src,dst".into(),
                series: Vec::new(),
                stats: FlowTableStats {
                    evicted: 4,
                    ..Default::default()
                },
            },
            Vec::new(),
            1_000,
        )
    }

    #[test]
    fn round_trips_through_the_file() {
        let dir = std::env::temp_dir().join(format!("np-state-{}", std::process::id()));
        let path = dir.join("state.json");
        prepare_dir(&path).unwrap();
        assert_eq!(load(&path).unwrap(), None);
        save(&path, &sample()).unwrap();
        assert_eq!(load(&path).unwrap(), Some(sample()));
        assert!(!temporary_path(&path).exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn damaged_or_foreign_files_are_named_not_misread() {
        assert!(decode(b"{\"format\":1").unwrap_err().contains("EOF"));
        let mut other = sample();
        other.format = 2;
        let bytes = serde_json::to_vec(&other).unwrap();
        assert_eq!(decode(&bytes).unwrap_err(), "format 2 (this build reads 1)");
    }

    #[test]
    fn damaged_files_are_kept_aside_with_their_bytes() {
        let dir = std::env::temp_dir().join(format!("np-state-corrupt-{}", std::process::id()));
        let path = dir.join("state.json");
        prepare_dir(&path).unwrap();
        fs::write(&path, b"{\"format\":1,").unwrap();
        assert!(matches!(load(&path), Err(LoadError::Damaged(err)) if err.contains("EOF")));
        assert_eq!(
            corrupt_path(&path, 1_700_000_000),
            dir.join("state.json.corrupt-1700000000")
        );
        let aside = keep_aside(&path, 1_700_000_000).unwrap();
        assert_eq!(aside, dir.join("state.json.corrupt-1700000000"));
        assert_eq!(fs::read(&aside).unwrap(), b"{\"format\":1,");
        assert!(!path.exists());
        assert_eq!(load(&path), Ok(None));
        // Another damaged file within the same second does not replace the first copy.
        fs::write(&path, b"garbage").unwrap();
        let second = keep_aside(&path, 1_700_000_000).unwrap();
        assert_eq!(second, dir.join("state.json.corrupt-1700000000-1"));
        assert_eq!(fs::read(&second).unwrap(), b"garbage");
        assert_eq!(fs::read(&aside).unwrap(), b"{\"format\":1,");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_unreadable_file_is_not_called_damaged() {
        // A directory where the file should be: reading fails, nothing to keep aside.
        let dir = std::env::temp_dir().join(format!("np-state-dir-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        assert!(matches!(load(&dir), Err(LoadError::Read(_))));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn restored_means_every_part() {
        let all = Restored {
            interfaces: true,
            flows: true,
        };
        assert!(all.all());
        let interfaces_only = Restored {
            flows: false,
            ..all
        };
        assert!(!interfaces_only.all());
        assert_eq!(
            interfaces_only.parts(),
            [("interfaces", true), ("flows", false)]
        );
        assert!(!Restored::default().all());
    }

    #[test]
    fn a_state_only_completes_the_maps_it_was_saved_with() {
        let state = sample();
        assert!(belongs_to(&state, &state.map_ids.clone()));
        assert!(!belongs_to(
            &state,
            &[("DEVICE_STATS".into(), 7), ("FLOWS".into(), 9)]
        ));
        assert!(!belongs_to(&state, &[]));
    }
}
