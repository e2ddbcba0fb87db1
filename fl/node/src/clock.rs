//! The coordinator's clock, injectable so a scenario can skew or drive it.
//!
//! The round state machine takes `now_ms` as an argument; this is the one place the `fl`
//! process reads time for it. `--clock-skew-ms` shifts the wall clock; `--clock-file` reads the
//! time (milliseconds since the Unix epoch, decimal) from a file that a scenario rewrites.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of "now" in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

/// The wall clock shifted by a fixed skew (positive = ahead).
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    pub skew_ms: i64,
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        wall.saturating_add_signed(self.skew_ms)
    }
}

/// Time read from a file on every call. If the file cannot be read or parsed, the last good
/// value is kept (time never goes backwards because of a half-written file).
#[derive(Debug)]
pub struct FileClock {
    path: PathBuf,
    last_ms: AtomicU64,
}

impl FileClock {
    pub fn new(path: PathBuf) -> anyhow::Result<Self> {
        let c = Self {
            path,
            last_ms: AtomicU64::new(0),
        };
        let first = c
            .read()
            .map_err(|e| anyhow::anyhow!("clock file {}: {e}", c.path.display()))?;
        c.last_ms.store(first, Ordering::SeqCst);
        Ok(c)
    }

    fn read(&self) -> Result<u64, String> {
        let text = std::fs::read_to_string(&self.path).map_err(|e| e.to_string())?;
        text.trim()
            .parse::<u64>()
            .map_err(|e| format!("`{}` is not milliseconds: {e}", text.trim()))
    }
}

impl Clock for FileClock {
    fn now_ms(&self) -> u64 {
        match self.read() {
            Ok(v) => self.last_ms.fetch_max(v, Ordering::SeqCst).max(v),
            Err(_) => self.last_ms.load(Ordering::SeqCst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_shifts_the_wall_clock() {
        let a = SystemClock { skew_ms: 0 }.now_ms();
        let b = SystemClock { skew_ms: 3_600_000 }.now_ms();
        assert!(b >= a + 3_600_000 && b < a + 3_700_000, "{a} {b}");
    }

    #[test]
    fn file_clock_follows_the_file_and_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("now");
        std::fs::write(&p, "1000\n").unwrap();
        let c = FileClock::new(p.clone()).unwrap();
        assert_eq!(c.now_ms(), 1000);
        std::fs::write(&p, "5000").unwrap();
        assert_eq!(c.now_ms(), 5000);
        std::fs::write(&p, "garbage").unwrap();
        assert_eq!(c.now_ms(), 5000);
        std::fs::write(&p, "10").unwrap();
        assert_eq!(c.now_ms(), 5000);
    }
}
