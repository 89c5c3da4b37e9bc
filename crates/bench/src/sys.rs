//! What the bench reads from the operating system: the file-descriptor limit (raised to the hard
//! limit), a process's resident memory, the machine's description, wall-clock time and the date.

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

#[repr(C)]
struct RLimit {
    cur: u64,
    max: u64,
}

const RLIMIT_NOFILE: i32 = 7;

extern "C" {
    fn getrlimit(resource: i32, limit: *mut RLimit) -> i32;
    fn setrlimit(resource: i32, limit: *const RLimit) -> i32;
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit and returns the soft limit now in
/// force (what the process may open).
pub fn raise_fd_limit() -> u64 {
    let mut limit = RLimit { cur: 0, max: 0 };
    // SAFETY: getrlimit/setrlimit read or write the one struct passed, of the C layout above
    // (two rlim_t, which are u64 on Linux x86_64 and aarch64).
    unsafe {
        if getrlimit(RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.cur < limit.max {
            let raised = RLimit {
                cur: limit.max,
                max: limit.max,
            };
            if setrlimit(RLIMIT_NOFILE, &raised) == 0 {
                limit.cur = limit.max;
            }
        }
    }
    limit.cur
}

/// Resident memory of process `pid` in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kib(&status, "VmRSS:").map(|kib| kib * 1024)
}

fn status_kib(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// How many descriptors process `pid` has open.
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Nanoseconds since the Unix epoch (comparable across processes of one machine).
pub fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Today's date in UTC, `YYYY-MM-DD`.
pub fn today() -> String {
    let days = (unix_nanos() / 1_000_000_000 / 86_400) as i64;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The machine a report was measured on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    pub cpu: String,
    pub os: String,
    pub fd_limit: u64,
}

impl Machine {
    pub fn read() -> Machine {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        let pretty = os_release
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_string())
            .unwrap_or_default();
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: status_kib(&meminfo, "MemTotal:").unwrap_or(0) as f64 / (1024.0 * 1024.0),
            cpu: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_else(|| "unknown".into()),
            os: format!("{pretty}, Linux {kernel}"),
            fd_limit: raise_fd_limit(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(rss_bytes(std::process::id()).is_some_and(|b| b > 0));
        assert!(raise_fd_limit() >= 64);
        let date = today();
        assert_eq!(date.len(), 10, "{date}");
        assert!(date.starts_with("20"), "{date}");
    }
}
