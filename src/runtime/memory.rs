//! The process's memory allocator: jemalloc, for Rust and C code alike.
//!
//! ferry's hot paths allocate on one thread and free on another: the forwarder (a tokio
//! worker) builds each Kafka record's headers inside librdkafka, whose poll thread frees them
//! after the delivery report; store reads are decoded on the blocking pool and dropped by the
//! forwarder. glibc's malloc serves that badly. Its arenas are shared between threads, so a
//! free from another thread takes the arena's lock, and under a drain those locks were
//! contended: `perf` showed the poll thread and the tokio worker waiting in
//! `__lll_lock_wait_private` inside `_int_free`, 24–46 context switches per 1000 records. With
//! glibc's default arenas (8 per core) the forwarder's RSS was also ~35 MiB higher, because
//! memory freed into one arena is not reused by the others.
//!
//! jemalloc (per-thread caches, frees returned to the owning arena in batches) fixes that.
//! Alternating the binaries before and after, the forwarder drained ~27 % faster on 4.8
//! instead of 6.3 µs of CPU per record, with 9–10 context switches per 1000 records
//! (BENCHMARKS.md, "Forwarder (issue 8)").
//! It is built in (`tikv-jemallocator`, the allocator TiKV and Vector ship) with unprefixed
//! symbols, so the `malloc`/`free` that librdkafka and zstd call resolve to jemalloc too —
//! the library declares the global allocator, so every binary, test and benchmark that links
//! it runs on the same allocator (as TiKV's `tikv_alloc` does). The `jemalloc` cargo feature
//! (on by default) switches it; the fuzz targets build without it, for ASan.
//!
//! Settings ([`MALLOC_CONF`], compiled in; the `MALLOC_CONF` environment variable overrides
//! them for a diagnostic run): two arenas (jemalloc would make four per core; the per-thread
//! caches keep contention low), and unused dirty pages handed back to the kernel after 1 s
//! instead of 10 s, so RSS follows the in-flight window down when a drain ends.

#[cfg(all(feature = "jemalloc", target_os = "linux"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's compiled-in options (see the module docs), NUL-terminated as jemalloc reads them.
pub const MALLOC_CONF: &[u8] = b"narenas:2,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// `const char *malloc_conf`: jemalloc reads this symbol once, when it initialises
/// (`#[no_mangle]` keeps it in the binary without being public here).
#[cfg(all(feature = "jemalloc", target_os = "linux"))]
mod conf {
    #[repr(transparent)]
    struct ConfPtr(*const u8);
    // SAFETY: the pointer refers to a `'static` immutable byte string.
    unsafe impl Sync for ConfPtr {}

    #[allow(non_upper_case_globals)]
    #[no_mangle]
    static malloc_conf: ConfPtr = ConfPtr(super::MALLOC_CONF.as_ptr());
}

/// The allocator this build runs on, for the start-up log.
pub fn allocator() -> &'static str {
    if cfg!(all(feature = "jemalloc", target_os = "linux")) {
        "jemalloc (built in; also serves librdkafka and zstd)"
    } else {
        "the system allocator"
    }
}

#[cfg(all(test, feature = "jemalloc", target_os = "linux"))]
mod tests {
    extern "C" {
        // jemalloc's control interface, unprefixed like its malloc.
        fn mallctl(
            name: *const libc::c_char,
            oldp: *mut libc::c_void,
            oldlenp: *mut libc::size_t,
            newp: *mut libc::c_void,
            newlen: libc::size_t,
        ) -> libc::c_int;
    }

    /// The built-in allocator really serves C code: `malloc` in this process is jemalloc's,
    /// which knows `mallctl` and reports the compiled-in options (`opt.narenas`; the arena
    /// count itself has one more, jemalloc's arena for huge allocations).
    #[test]
    fn c_malloc_is_jemalloc_with_ferrys_settings() {
        // SAFETY: plain C allocation and release of 64 bytes.
        unsafe {
            let p = libc::malloc(64);
            assert!(!p.is_null());
            libc::free(p);
        }
        let mut narenas: libc::c_uint = 0;
        let mut len = std::mem::size_of::<libc::c_uint>();
        // SAFETY: "opt.narenas" is an unsigned int; we pass its address and size.
        let rc = unsafe {
            mallctl(
                c"opt.narenas".as_ptr(),
                (&mut narenas as *mut libc::c_uint).cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        assert_eq!(rc, 0, "mallctl failed: jemalloc is not the allocator");
        assert_eq!(narenas, 2);
    }
}
