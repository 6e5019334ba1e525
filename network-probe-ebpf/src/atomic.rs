//! The one atomic read-modify-write the programs need: adding to a u64 in a map value that
//! several CPUs update. A leaf module, shared by the flow accounting and the passive signals.

/// `*target += value` as one atomic instruction (BPF_ATOMIC | BPF_ADD): flow counters are
/// shared between CPUs. The bpfel target offers no AtomicU64::fetch_add, hence the asm.
#[inline(always)]
pub(crate) fn atomic_add(target: &mut u64, value: u64) {
    // SAFETY: `target` is a valid, 8-byte aligned u64 in a map value.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({0} + 0) += {1}",
            in(reg) target as *mut u64,
            in(reg) value,
        );
    }
}
