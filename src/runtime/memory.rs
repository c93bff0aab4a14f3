//! Process-wide memory settings, applied once at start-up before any thread exists.
//!
//! glibc gives every thread that allocates concurrently its own malloc arena (up to 8 per
//! core), and memory freed into one arena is not reused by the others. ferry's threads (tokio
//! workers, the blocking pool that reads the store, librdkafka's broker and poll threads) all
//! allocate, and record buffers are allocated on one thread and freed on another, so with the
//! default arenas the forwarder's RSS was ~35 MiB higher while draining a large backlog
//! (BENCHMARKS.md, "Forwarder (issue 8)", RSS). Two arenas are enough for ferry's contention.

/// The arena cap ferry applies unless the operator set `MALLOC_ARENA_MAX` themselves.
pub const MALLOC_ARENAS: i32 = 2;

/// What [`cap_malloc_arenas`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArenaCap {
    /// `mallopt(M_ARENA_MAX, n)` succeeded.
    Capped(i32),
    /// `MALLOC_ARENA_MAX` is set in the environment; glibc already applied it, ferry keeps it.
    FromEnvironment,
    /// Not glibc, or `mallopt` refused: the allocator's defaults stay.
    Unchanged,
}

/// Caps glibc's malloc arenas at [`MALLOC_ARENAS`]. Call it first thing in `main` (the daemon
/// does, and so does the forwarder benchmark, so both measure the same process setup).
pub fn cap_malloc_arenas() -> ArenaCap {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return ArenaCap::FromEnvironment;
    }
    cap(MALLOC_ARENAS)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn cap(n: i32) -> ArenaCap {
    // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time and
    // takes plain integers.
    let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, n) };
    if ok == 1 {
        ArenaCap::Capped(n)
    } else {
        ArenaCap::Unchanged
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn cap(_n: i32) -> ArenaCap {
    ArenaCap::Unchanged
}
