//! Where the store reads the filesystem's free space from (for the disk headroom rule).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// A source of "bytes available on the data directory's filesystem".
pub trait FreeSpace: Send + Sync {
    fn available(&self) -> std::io::Result<u64>;
}

/// `statvfs(2)` on the data directory: blocks available to unprivileged users x fragment size.
pub struct StatvfsFreeSpace {
    path: PathBuf,
}

impl StatvfsFreeSpace {
    pub fn new(path: PathBuf) -> Self {
        StatvfsFreeSpace { path }
    }
}

impl FreeSpace for StatvfsFreeSpace {
    fn available(&self) -> std::io::Result<u64> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(self.path.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(st.f_bavail as u64 * st.f_frsize as u64)
    }
}

/// A free-space figure a test (or the simulation in the bench) sets by hand.
#[derive(Default)]
pub struct FixedFreeSpace(AtomicU64);

impl FixedFreeSpace {
    pub fn new(bytes: u64) -> Self {
        FixedFreeSpace(AtomicU64::new(bytes))
    }
    pub fn set(&self, bytes: u64) {
        self.0.store(bytes, Ordering::Relaxed)
    }
}

impl FreeSpace for FixedFreeSpace {
    fn available(&self) -> std::io::Result<u64> {
        Ok(self.0.load(Ordering::Relaxed))
    }
}
