//! Reading a whole BPF hash map or array in a few system calls (`BPF_MAP_LOOKUP_BATCH`, Linux
//! 5.6+) instead of two per entry (get-next-key, lookup) as aya's iterator does. At 100k flows
//! that is a few dozen calls instead of 200k.
//!
//! aya does not wrap the batch commands, so this module issues the `bpf(2)` call itself with the
//! kernel's `union bpf_attr` batch layout; everything unsafe is here.

use std::{io, mem::size_of, os::fd::RawFd};

use aya::Pod;

/// `BPF_MAP_LOOKUP_BATCH` from `linux/bpf.h`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries fetched per call. A hash map batch ends at a bucket boundary, so the count must hold
/// the largest bucket; thousands is far beyond any real chain.
const CHUNK: usize = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of the hash map (or LRU hash map) behind `map_fd`. Not a snapshot: entries the
/// programs add or the kernel evicts meanwhile may or may not be included, as with iteration.
pub(crate) fn lookup_all<K: Pod, V: Pod>(map_fd: RawFd) -> io::Result<Vec<(K, V)>> {
    let mut entries = Vec::new();
    visit_all(map_fd, |keys: &[K], values: &[V]| {
        entries.extend(keys.iter().copied().zip(values.iter().copied()));
    })?;
    Ok(entries)
}

/// Every entry of an aya hash map `name`: in batches, or entry by entry where the kernel has
/// no batch lookup. The pending-SYN and per-flow signal maps were read entry by entry at every
/// refresh: with 10k attempts pending, 20k system calls made a 10k-flow scrape 34.6 ms instead
/// of 6.6 ms.
pub(crate) fn read_hash_map<K: Pod, V: Pod>(
    map: &aya::maps::HashMap<aya::maps::MapData, K, V>,
    name: &str,
) -> Vec<(K, V)> {
    use aya::maps::IterableMap as _;
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let fd = map.map().fd().as_fd().as_raw_fd();
    match lookup_all(fd) {
        Ok(entries) => entries,
        Err(err) => {
            log::warn!("reading {name} in batches: {err}; reading it entry by entry");
            map.iter()
                .filter_map(|item| item.map_err(|err| log::warn!("reading {name}: {err}")).ok())
                .collect()
        }
    }
}

/// Every entry of the hash map (or LRU hash map) behind `map_fd`, handed to `visit` a batch of
/// keys and values at a time (see [`lookup_batches`]), for callers that keep entries in their
/// own form.
pub(crate) fn visit_all<K: Pod, V: Pod>(
    map_fd: RawFd,
    visit: impl FnMut(&[K], &[V]),
) -> io::Result<()> {
    lookup_batches(map_fd, 1, CHUNK, visit)
}

/// Reads every entry of the map behind `map_fd`, at most `chunk` entries per system call, and
/// hands each batch to `visit` (keys, then `values_per_entry` consecutive values per key), so
/// only one batch is in memory at a time. `values_per_entry` is 1 for a hash map or array and
/// the number of possible CPUs for a per-CPU map (whose `V` must then be a multiple of 8 bytes,
/// as the kernel pads each CPU's copy to 8). A hash map's batch ends at a bucket boundary, so
/// `chunk` must hold its largest bucket ([`CHUNK`] does).
pub(crate) fn lookup_batches<K: Pod, V: Pod>(
    map_fd: RawFd,
    values_per_entry: usize,
    chunk: usize,
    mut visit: impl FnMut(&[K], &[V]),
) -> io::Result<()> {
    assert!(values_per_entry > 0 && chunk > 0);
    // The buffers start small and grow fourfold while batches come back (about) full, up to
    // `chunk`: every refresh reads the pending-SYN maps (and, when a family needs them, the
    // signal maps) besides the flow maps, mostly empty, and buffers of `chunk` entries (a flow
    // map's values alone are 384 KiB, above glibc's mmap threshold) were allocated and freed
    // for each. A 100k-entry map takes about three calls more.
    let mut size = chunk.min(FIRST_CHUNK);
    let mut keys: Vec<K> = Vec::with_capacity(size);
    let mut values: Vec<V> = Vec::with_capacity(size * values_per_entry);
    // The batch token is a bucket index (hash maps) or an index (arrays), a u32 either way.
    let mut token_in: u64 = 0;
    let mut token_out: u64 = 0;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &token_in as *const u64 as u64
            },
            out_batch: &mut token_out as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: size as u32,
            map_fd: map_fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` describes buffers of `chunk` keys and `chunk` entries' values that
        // outlive the call and two token slots of 8 bytes (the kernel writes 4); the kernel
        // writes at most `count` entries and reports how many in `count`.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let error = (result < 0).then(io::Error::last_os_error);
        let filled = (attr.count as usize).min(size);
        // A hash map's batch ends at a bucket boundary, so a batch that needed more room
        // comes back short of the buffers' size: half full is full enough.
        let grow = size < chunk && (filled * 2 >= size || error_is(&error, libc::ENOSPC));
        if grow && error_is(&error, libc::ENOSPC) {
            // The next bucket holds more entries than the buffers (nothing was copied): the
            // same batch again with larger ones.
            size = (size * 4).min(chunk);
            keys.reserve_exact(size);
            values.reserve_exact(size * values_per_entry);
            continue;
        }
        match &error {
            // ENOENT: the end of the map (entries may still have been filled).
            Some(err) if err.raw_os_error() != Some(libc::ENOENT) => {
                return Err(io::Error::new(
                    err.kind(),
                    format!("BPF_MAP_LOOKUP_BATCH: {err}"),
                ));
            }
            _ => {}
        }
        // SAFETY: the kernel initialised the first `filled` keys and entries' values.
        unsafe {
            keys.set_len(filled);
            values.set_len(filled * values_per_entry);
        }
        visit(&keys, &values);
        if error.is_some() {
            return Ok(());
        }
        token_in = token_out;
        first = false;
        if grow {
            size = (size * 4).min(chunk);
            keys.clear();
            values.clear();
            keys.reserve_exact(size);
            values.reserve_exact(size * values_per_entry);
        }
    }
}

/// Entries of a read's first batch (see [`lookup_batches`]).
const FIRST_CHUNK: usize = 128;

/// Whether `error` is the OS error `code`.
fn error_is(error: &Option<io::Error>, code: i32) -> bool {
    error
        .as_ref()
        .is_some_and(|err| err.raw_os_error() == Some(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bpf(2)` with `attr` (a command's attribute struct), as a result.
    fn bpf<T>(command: libc::c_long, attr: &mut T) -> io::Result<i64> {
        // SAFETY: `attr` is the command's attribute layout, valid for the call.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                command,
                attr as *mut T,
                size_of::<T>() as u32,
            )
        };
        if result < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(result)
        }
    }

    /// A BPF hash map of u32 -> u64 holding `count` entries (key i, value 3 i); closed on drop.
    fn hash_map(count: u32) -> std::os::fd::OwnedFd {
        use std::os::fd::FromRawFd as _;
        #[repr(C)]
        #[derive(Default)]
        struct Create {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
            map_flags: u32,
        }
        #[repr(C)]
        #[derive(Default)]
        struct Update {
            map_fd: u32,
            _pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        let mut create = Create {
            map_type: 1, // BPF_MAP_TYPE_HASH
            key_size: 4,
            value_size: 8,
            max_entries: count,
            ..Create::default()
        };
        let fd = bpf(0, &mut create).expect("BPF_MAP_CREATE (run as root)") as RawFd;
        // SAFETY: the kernel just returned this descriptor, owned by nobody else.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        for key in 0..count {
            let value = u64::from(key) * 3;
            let mut update = Update {
                map_fd: fd as u32,
                key: &key as *const u32 as u64,
                value: &value as *const u64 as u64,
                ..Update::default()
            };
            bpf(2, &mut update).expect("BPF_MAP_UPDATE_ELEM");
        }
        owned
    }

    /// Batches that start at [`FIRST_CHUNK`] entries and grow read every entry once: an empty
    /// map, one within the first batch, and maps that take the buffers to `chunk` and beyond.
    #[test]
    fn every_entry_once_as_the_batches_grow() {
        use std::os::fd::AsRawFd as _;
        for count in [0u32, 1, 100, 128, 129, 700, 3_000, 20_000] {
            let map = hash_map(count.max(1));
            if count == 0 {
                // A map of one entry, emptied.
                let key = 0u32;
                #[repr(C)]
                struct Delete {
                    map_fd: u32,
                    _pad: u32,
                    key: u64,
                }
                let mut delete = Delete {
                    map_fd: map.as_raw_fd() as u32,
                    _pad: 0,
                    key: &key as *const u32 as u64,
                };
                bpf(3, &mut delete).expect("BPF_MAP_DELETE_ELEM");
            }
            let mut batches = Vec::new();
            let mut entries: Vec<(u32, u64)> = Vec::new();
            lookup_batches(map.as_raw_fd(), 1, CHUNK, |keys: &[u32], values: &[u64]| {
                batches.push(keys.len());
                entries.extend(keys.iter().copied().zip(values.iter().copied()));
            })
            .expect("BPF_MAP_LOOKUP_BATCH");
            entries.sort_unstable();
            let expected: Vec<(u32, u64)> = (0..count).map(|k| (k, u64::from(k) * 3)).collect();
            assert_eq!(entries, expected, "{count} entries, batches {batches:?}");
            assert!(
                batches.iter().all(|&len| len <= CHUNK),
                "{count}: {batches:?}"
            );
            if count >= 20_000 {
                // 128, 512, 2048, then CHUNK at a time: a handful of calls.
                assert!(batches.len() <= 3 + 20_000 / CHUNK + 3, "{batches:?}");
            }
        }
    }
}
