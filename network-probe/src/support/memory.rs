//! Handing freed heap memory back to the system. A scrape of 100k flow series allocates and
//! frees about 100 MB; glibc keeps freed memory mapped until asked, so the resident size would
//! stay at its peak between scrapes. Large blocks are mappings of their own
//! ([`map_large_blocks`]), given back the moment they are freed.

/// Returns free heap memory to the system. Walks the whole heap: call it off the async
/// runtime's threads.
pub(crate) fn trim_heap() {
    // SAFETY: malloc_trim only releases free heap memory; it touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Blocks at least this large are mappings of their own ([`map_large_blocks`]).
pub(crate) const MMAP_THRESHOLD: usize = 4 * 1024 * 1024;

/// Makes every heap block of at least [`MMAP_THRESHOLD`] bytes a mapping of its own, unmapped
/// when freed, and keeps glibc from raising that threshold as it does by default (up to 32 MiB,
/// each time such a mapped block is freed). Raised, the large blocks of a 100k-flow table and of
/// each scrape's snapshot (megabytes each, grown and freed at every scrape) were placed in the
/// arenas among the small ones, and left resident memory there that a trim could not hand back
/// (RSS at 100k flows of distinct addresses 71-74 MB before, 51-54 MB after, interleaved). 4 MiB
/// rather than glibc's starting 128 KiB: with 256 KiB the medium blocks of every refresh (batch
/// buffers, the attempts' map) were mapped and unmapped at each scrape, and 10k-flow scrapes
/// seemed slower (35-49 ms against 20-27 ms, three interleaved rounds at load 7-9).
/// Call once, before other threads start.
pub(crate) fn map_large_blocks() -> bool {
    // SAFETY: mallopt only changes allocator tuning.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1 }
}
