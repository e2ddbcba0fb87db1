//! Host-level faults of the local backend: a full disk under the coordinator's store (or an
//! etcd member's data dir, see `etcd.rs`) and a coordinator clock that the harness drives.
//!
//! - **Disk full**: when a case has a `disk_full` fault, the coordinator's data dir is a tmpfs
//!   of its own (mounted at session start, [`TMPFS_SIZE`] at most, RAM used only as written).
//!   `disk_full` shrinks it to exactly what is in use (`remount,size=`), so the next block the
//!   coordinator writes fails with ENOSPC, as a full volume does. Mounting needs
//!   `CAP_SYS_ADMIN` (root in CI); without it the fault is skipped with the reason. Unmounted
//!   when the session ends, after the processes are gone.
//! - **Clock skew**: when a case has a `clock_skew` fault, the coordinator reads its clock from
//!   a file (`fl coordinator --clock-file`) that a harness thread rewrites every
//!   [`CLOCK_TICK_MS`] with the wall clock plus the current skew; `clock_skew` changes the
//!   skew, so the coordinator's round timers see time jump as a stepped NTP clock would.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::epoch_ms;

/// Largest the coordinator's tmpfs grows before `disk_full` (pages are allocated on write).
pub const TMPFS_SIZE: &str = "4g";
/// How often the clock file is rewritten (the coordinator re-reads its clock at least every
/// 200 ms, `TIMER_RECHECK` in fl-node).
pub const CLOCK_TICK_MS: u64 = 10;

fn cpath(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{} has a NUL byte", p.display()))
}

/// A tmpfs mounted at a directory, unmounted on drop.
pub struct Tmpfs {
    at: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs at `at` (created if needed).
    pub fn mount(at: &Path) -> Result<Self, String> {
        Self::mount_mode(at, "0755")
    }

    /// Mounts a tmpfs at `at` whose root has permissions `mode` (octal, as `mount -o mode=`).
    pub fn mount_mode(at: &Path, mode: &str) -> Result<Self, String> {
        std::fs::create_dir_all(at)
            .map_err(|e| format!("failed to create {}: {e}", at.display()))?;
        Self::call(at, 0, &format!("size={TMPFS_SIZE},mode={mode}"))?;
        Ok(Self {
            at: at.to_path_buf(),
        })
    }

    fn call(at: &Path, flags: libc::c_ulong, opts: &str) -> Result<(), String> {
        let src = CString::new("tmpfs").unwrap_or_default();
        let target = cpath(at)?;
        let data = CString::new(opts).map_err(|_| "bad mount options".to_string())?;
        // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                src.as_ptr(),
                flags,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(format!(
                "mount -t tmpfs -o {opts} {}: {}",
                at.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// Bytes in use on the tmpfs.
    pub fn used_bytes(&self) -> Result<u64, String> {
        let p = cpath(&self.at)?;
        // SAFETY: statvfs fills the struct we pass; the path is a valid C string.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(p.as_ptr(), &mut st) } != 0 {
            return Err(format!(
                "statvfs {}: {}",
                self.at.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok((st.f_blocks - st.f_bfree) * st.f_frsize)
    }

    /// Shrinks the tmpfs to what it holds: every later allocation fails with ENOSPC.
    /// Returns the size it was fixed at.
    pub fn fill(&self) -> Result<u64, String> {
        let used = self.used_bytes()?;
        // tmpfs takes the size in pages; at least one page so the mount stays valid.
        let page = 4096u64;
        let size = used.div_ceil(page).max(1) * page;
        Self::call(&self.at, libc::MS_REMOUNT, &format!("size={size}"))?;
        Ok(size)
    }

    pub fn path(&self) -> &Path {
        &self.at
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Ok(p) = cpath(&self.at) {
            // SAFETY: a valid path; a busy mount is detached instead (MNT_DETACH).
            unsafe {
                if libc::umount2(p.as_ptr(), 0) != 0 {
                    libc::umount2(p.as_ptr(), libc::MNT_DETACH);
                }
            }
        }
    }
}

/// Writes `wall clock + skew` to a file every tick until dropped.
pub struct ClockDriver {
    path: PathBuf,
    skew_ms: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn write_clock(path: &Path, skew: i64, writer: &str) -> std::io::Result<()> {
    // One temp file per writer (the ticker, `set_skew`): two writers sharing one could rename
    // the other's half-written file into place.
    let tmp = path.with_extension(format!("{writer}.tmp"));
    std::fs::write(&tmp, epoch_ms().saturating_add_signed(skew).to_string())?;
    // A rename is atomic: the reader never sees half a number.
    std::fs::rename(&tmp, path)
}

impl ClockDriver {
    /// Starts at skew 0; the file exists when this returns.
    pub fn start(path: &Path) -> Result<Self, String> {
        write_clock(path, 0, "start")
            .map_err(|e| format!("failed to write {}: {e}", path.display()))?;
        let skew_ms = Arc::new(AtomicI64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s, st) = (path.to_path_buf(), skew_ms.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("clock-driver".into())
            .spawn(move || {
                while !st.load(Ordering::SeqCst) {
                    let _ = write_clock(&p, s.load(Ordering::SeqCst), "tick");
                    std::thread::sleep(Duration::from_millis(CLOCK_TICK_MS));
                }
            })
            .map_err(|e| format!("failed to start the clock driver: {e}"))?;
        Ok(Self {
            path: path.to_path_buf(),
            skew_ms,
            stop,
            thread: Some(thread),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the skew (positive: ahead) and writes it at once.
    pub fn set_skew(&self, ms: i64) {
        self.skew_ms.store(ms, Ordering::SeqCst);
        let _ = write_clock(&self.path, ms, "set");
    }

    pub fn skew_ms(&self) -> i64 {
        self.skew_ms.load(Ordering::SeqCst)
    }
}

impl Drop for ClockDriver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_file_follows_the_skew() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("clock");
        let c = ClockDriver::start(&p).unwrap();
        let read = || -> u64 { std::fs::read_to_string(&p).unwrap().trim().parse().unwrap() };
        let now = epoch_ms();
        assert!(read().abs_diff(now) < 60_000);
        c.set_skew(3_600_000);
        assert!(read() >= now + 3_600_000);
        c.set_skew(-3_600_000);
        assert!(read() < now);
        drop(c);
    }
}
