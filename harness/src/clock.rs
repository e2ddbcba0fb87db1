//! Wall-clock stamps for run ids and reports (the shell side; the simulator never reads a clock).

use std::time::{SystemTime, UNIX_EPOCH};

/// Civil UTC date-time of a Unix time in seconds: (year, month, day, hour, minute, second).
/// Howard Hinnant's days-from-civil inverse, exact for the proleptic Gregorian calendar.
pub fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        m,
        d,
        (rem / 3_600) as u32,
        ((rem / 60) % 60) as u32,
        (rem % 60) as u32,
    )
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `2026-11-25T06:03:50Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = civil(unix(t));
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// `20261125-060350-<pid>`: sortable, unique per process.
pub fn run_id(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = civil(unix(t));
    format!(
        "{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}-{}",
        std::process::id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_matches_known_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        // 2000-02-29T12:34:56Z
        assert_eq!(civil(951_827_696), (2000, 2, 29, 12, 34, 56));
        // 2026-11-25T06:03:50Z
        assert_eq!(civil(1_795_586_630), (2026, 11, 25, 6, 3, 50));
    }
}
