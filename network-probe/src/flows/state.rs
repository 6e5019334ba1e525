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

use std::{
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use network_probe_common::FlowKey;
use serde::{Deserialize, Serialize};

use crate::{flows::table::FlowTableState, kernel::datapath::DatapathTotals};

/// Default `--datapath.state-file`.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/network-probe/state.json";

/// Version of the file's own format.
const FORMAT: u32 = 1;

/// Everything the file holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
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
    pub fn new(
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
pub fn decode(bytes: &[u8]) -> Result<SavedState, String> {
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
pub fn belongs_to(state: &SavedState, map_ids: &[(String, u32)]) -> bool {
    !map_ids.is_empty() && state.map_ids == map_ids
}

/// Reads the state file: `Ok(None)` when there is none.
pub fn load(path: &Path) -> Result<Option<SavedState>, String> {
    match fs::read(path) {
        Ok(bytes) => decode(&bytes)
            .map(Some)
            .map_err(|err| format!("{}: {err}", path.display())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(format!("reading {}: {err}", path.display())),
    }
}

/// Writes `state` to `path` atomically: a reader (the next start) sees the old or the new file,
/// never a torn one, even if the daemon is killed meanwhile. No fsync: what it protects against
/// (a kernel crash, a power cut) also empties the pinned maps, and the file is then discarded.
pub fn save(path: &Path, state: &SavedState) -> io::Result<()> {
    let bytes = serde_json::to_vec(state).map_err(io::Error::other)?;
    let temporary = temporary_path(path);
    fs::File::create(&temporary)?.write_all(&bytes)?;
    fs::rename(&temporary, path)
}

/// Creates the directory of `path` if needed (the systemd unit's StateDirectory does it in
/// production).
pub fn prepare_dir(path: &Path) -> io::Result<()> {
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
