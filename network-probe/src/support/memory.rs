//! Handing freed heap memory back to the system. A scrape of 100k flow series allocates and
//! frees about 100 MB; glibc keeps freed memory mapped until asked, so the resident size would
//! stay at its peak between scrapes.

/// Returns free heap memory to the system. Walks the whole heap: call it off the async
/// runtime's threads.
pub(crate) fn trim_heap() {
    // SAFETY: malloc_trim only releases free heap memory; it touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}
