//! Reading packet bytes, the same way for TC (skb) and XDP buffers. Bytes in the linear part
//! of the packet (where headers are in practice) are read directly, after a bounds check
//! against `data_end`; anything else goes through the kernel's load-bytes helpers, which
//! bounds-check at run time and also reach non-linear data. Both ways return the same bytes,
//! so what a read returns does not depend on how the packet is laid out in memory.

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{
    helpers::generated::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};

/// Offsets beyond this are always read through the helper. Headers sit far below it; the cap
/// keeps the offset small enough for the verifier to accept adding it to the packet pointer.
const MAX_DIRECT_OFFSET: usize = 1024;

/// Reads a `T` at `offset` from the linear data `[data, data_end)`; `None` when it does not lie
/// entirely inside (the caller then falls back to the helper).
#[inline(always)]
fn load_direct<T: Copy>(data: usize, data_end: usize, offset: usize) -> Option<T> {
    if offset > MAX_DIRECT_OFFSET {
        return None;
    }
    let start = data + offset;
    let size = core::mem::size_of::<T>();
    if start + size > data_end {
        return None;
    }
    let mut value = MaybeUninit::<T>::uninit();
    let out = value.as_mut_ptr() as *mut u8;
    // Whole words, then the tail. A plain unaligned read would be split into one load per byte
    // (the BPF target assumes no unaligned access); packet data may be read unaligned on the
    // architectures whose kernels do not enforce strict alignment (x86-64, arm64), so the loads
    // are written out. The values land in registers, where the parser's field extraction works
    // on them directly.
    let mut done = 0;
    while done + 8 <= size {
        // SAFETY: `[start + done, start + done + 8)` is inside the linear data (checked above,
        // as the verifier checks); the destination is inside `value`.
        unsafe {
            out.add(done)
                .cast::<u64>()
                .write_unaligned(load_u64(start + done))
        };
        done += 8;
    }
    while done + 4 <= size {
        // SAFETY: as above, 4 bytes.
        unsafe {
            out.add(done)
                .cast::<u32>()
                .write_unaligned(load_u32(start + done))
        };
        done += 4;
    }
    while done + 2 <= size {
        // SAFETY: as above, 2 bytes.
        unsafe {
            out.add(done)
                .cast::<u16>()
                .write_unaligned(load_u16(start + done))
        };
        done += 2;
    }
    while done < size {
        // SAFETY: as above, 1 byte.
        unsafe { *out.add(done) = *((start + done) as *const u8) };
        done += 1;
    }
    // SAFETY: every byte of `value` was written; `T` is plain bytes.
    Some(unsafe { value.assume_init() })
}

/// Defines `$name(address) -> $ty`: a load of that width from packet data, whatever its
/// alignment (see [`load_direct`]). Pure: a load whose value goes unused is dropped, so a
/// header can be loaded whole (its length checked once) and only the words used are read.
macro_rules! packet_load {
    ($name:ident, $ty:ty, $width:literal) => {
        #[inline(always)]
        fn $name(address: usize) -> $ty {
            let value: u64;
            // SAFETY: the caller checked that the bytes at `address` are packet data.
            unsafe {
                core::arch::asm!(
                    concat!("{0} = *(", $width, " *)({1} + 0)"),
                    out(reg) value,
                    in(reg) address,
                    options(pure, readonly, nostack, preserves_flags)
                );
            }
            value as $ty
        }
    };
}

packet_load!(load_u64, u64, "u64");
packet_load!(load_u32, u32, "u32");
packet_load!(load_u16, u16, "u16");

/// A packet the parser can read from.
pub(crate) trait Packet {
    /// Reads a `T` at `offset` bytes from the start of the link-layer header; `None` past the
    /// end of the packet.
    fn load<T: Copy>(&self, offset: usize) -> Option<T>;
    /// Length of the packet at this hook, link-layer header included.
    fn len(&self) -> u32;
    /// Reads `len` bytes (1 to 40) at `offset` into the front of `buf`; false past the end.
    fn load_span(&self, offset: usize, buf: &mut [u8; 64], len: u32) -> bool;
    /// Reads a `T` at `offset` from the linear data only (no helper call): `None` also when
    /// it lies in non-linear data. For reads that may miss rarely (passive RTT's timestamp
    /// option), where the helper's extra path cost the verifier too many states.
    fn load_linear<T: Copy>(&self, offset: usize) -> Option<T>;
}

impl Packet for TcContext {
    #[inline(always)]
    fn load_linear<T: Copy>(&self, offset: usize) -> Option<T> {
        load_direct(self.data(), self.data_end(), offset)
    }

    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        if let Some(value) = load_direct(self.data(), self.data_end(), offset) {
            return Some(value);
        }
        let mut value = MaybeUninit::<T>::uninit();
        // SAFETY: the helper writes at most size_of::<T>() bytes into `value`.
        let rc = unsafe {
            bpf_skb_load_bytes(
                self.skb.skb as *const c_void,
                offset as u32,
                value.as_mut_ptr() as *mut c_void,
                core::mem::size_of::<T>() as u32,
            )
        };
        // SAFETY: rc == 0 means every byte was written.
        (rc == 0).then(|| unsafe { value.assume_init() })
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }

    #[inline(always)]
    fn load_span(&self, offset: usize, buf: &mut [u8; 64], len: u32) -> bool {
        let Some(len) = span_len(len) else {
            return false;
        };
        // SAFETY: 1 <= len <= 64 = buf.len().
        unsafe {
            bpf_skb_load_bytes(
                self.skb.skb as *const c_void,
                offset as u32,
                buf.as_mut_ptr() as *mut c_void,
                len,
            ) == 0
        }
    }
}

impl Packet for XdpContext {
    #[inline(always)]
    fn load_linear<T: Copy>(&self, offset: usize) -> Option<T> {
        load_direct(self.data(), self.data_end(), offset)
    }

    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        if let Some(value) = load_direct(self.data(), self.data_end(), offset) {
            return Some(value);
        }
        let mut value = MaybeUninit::<T>::uninit();
        // SAFETY: the helper writes at most size_of::<T>() bytes into `value`.
        let rc = unsafe {
            bpf_xdp_load_bytes(
                self.ctx as *mut _,
                offset as u32,
                value.as_mut_ptr() as *mut c_void,
                core::mem::size_of::<T>() as u32,
            )
        };
        // SAFETY: rc == 0 means every byte was written.
        (rc == 0).then(|| unsafe { value.assume_init() })
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        let mut len = self.data_end();
        // A 64-bit subtraction the compiler cannot narrow: built for BPF CPU v3, it otherwise
        // subtracts the low halves, and the verifier rejects 32-bit arithmetic on packet
        // pointers.
        // SAFETY: register arithmetic only.
        unsafe {
            core::arch::asm!(
                "{0} -= {1}",
                inout(reg) len,
                in(reg) self.data(),
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        len as u32
    }

    #[inline(always)]
    fn load_span(&self, offset: usize, buf: &mut [u8; 64], len: u32) -> bool {
        let Some(len) = span_len(len) else {
            return false;
        };
        // SAFETY: 1 <= len <= 64 = buf.len().
        unsafe {
            bpf_xdp_load_bytes(
                self.ctx as *mut _,
                offset as u32,
                buf.as_mut_ptr() as *mut c_void,
                len,
            ) == 0
        }
    }
}

/// `len` when it is 1..=40 (a span [`Packet::load_span`] may copy), in a form the verifier can
/// bound. The range check alone is redundant to LLVM, which drops it; Linux 6.1's verifier then
/// sees a length that may be zero or negative and rejects the load helper. So the length is
/// re-derived from an opaque copy into 1..=64 (within the 64-byte buffer), which changes no
/// value.
#[inline(always)]
fn span_len(len: u32) -> Option<u32> {
    if len == 0 || len > 40 {
        return None;
    }
    Some((core::hint::black_box(len).wrapping_sub(1) & 63) + 1)
}
