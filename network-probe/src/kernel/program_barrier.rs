//! Waiting until every eBPF program that is running right now has finished.
//!
//! The kernel has no command for that, but it does it on the way: updating an element of an
//! array of maps waits for an RCU grace period before the system call returns
//! (`maybe_wait_bpf_programs` in kernel/bpf/syscall.c), so that user space knows no program
//! still uses the old inner map. The TC and XDP programs run inside RCU read-side sections, so
//! once the call returns, every run that started before it has ended. The kernel's own
//! selftests use the same update to wait for programs.
//!
//! [`ProgramBarrier`] creates a one-element array of maps and a one-element inner array at
//! start-up (creating maps needs CAP_BPF, which the daemon drops later; updating them through
//! the descriptors kept here needs no capability). Everything unsafe about it is here.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// The map-creation members of `union bpf_attr`, padded to the size the kernel accepts with
/// everything after `map_name` zero.
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    _rest: [u32; 16],
}

/// The element members of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf(command: libc::c_long, attr: *mut u8, size: usize) -> io::Result<libc::c_long> {
    // SAFETY: `attr` points to a `size`-byte attribute union member owned by the caller, alive
    // for the call; the kernel reads at most `size` bytes.
    let result = unsafe { libc::syscall(libc::SYS_bpf, command, attr, size as u32) };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

fn create_array(name: &[u8], map_type: u32, inner_map_fd: u32) -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        inner_map_fd,
        ..MapCreateAttr::default()
    };
    attr.map_name[..name.len()].copy_from_slice(name);
    let fd = bpf(
        BPF_MAP_CREATE,
        &mut attr as *mut MapCreateAttr as *mut u8,
        size_of::<MapCreateAttr>(),
    )?;
    // SAFETY: BPF_MAP_CREATE returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct ProgramBarrier {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl ProgramBarrier {
    /// Creates the two maps (needs CAP_BPF).
    pub(crate) fn new() -> io::Result<Self> {
        let inner = create_array(b"np_barrier_in", BPF_MAP_TYPE_ARRAY, 0)?;
        let outer = create_array(
            b"np_barrier",
            BPF_MAP_TYPE_ARRAY_OF_MAPS,
            inner.as_raw_fd() as u32,
        )?;
        Ok(ProgramBarrier { outer, inner })
    }

    /// Returns once every eBPF program run that had started when it was called has finished
    /// (an RCU grace period: milliseconds).
    pub(crate) fn wait(&self) -> io::Result<()> {
        let key: u32 = 0;
        let value: u32 = self.inner.as_raw_fd() as u32;
        let mut attr = MapElemAttr {
            map_fd: self.outer.as_raw_fd() as u32,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            ..MapElemAttr::default()
        };
        bpf(
            BPF_MAP_UPDATE_ELEM,
            &mut attr as *mut MapElemAttr as *mut u8,
            size_of::<MapElemAttr>(),
        )
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs CAP_BPF (the tests run as root). The wait takes a grace period: measurably more
    /// than a plain array update, which is the only effect user space can observe.
    #[test]
    fn waits_for_a_grace_period() {
        let barrier = ProgramBarrier::new().expect("creating the barrier maps (root?)");
        let start = std::time::Instant::now();
        for _ in 0..3 {
            barrier.wait().expect("waiting for programs");
        }
        assert!(start.elapsed() > std::time::Duration::from_micros(100));
    }
}
