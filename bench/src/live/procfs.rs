//! CPU time and memory of a process, from /proc, and the file-descriptor limit.

use std::time::Instant;

/// CPU time used by a process so far, and when it was read.
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    /// utime + stime, in clock ticks.
    ticks: u64,
    at: Instant,
}

impl CpuSample {
    /// Reads `/proc/<pid>/stat` (`None`: this process).
    pub fn read(pid: Option<u32>) -> Option<CpuSample> {
        let path = match pid {
            Some(pid) => format!("/proc/{pid}/stat"),
            None => "/proc/self/stat".to_owned(),
        };
        let text = std::fs::read_to_string(path).ok()?;
        Some(CpuSample { ticks: stat_cpu_ticks(&text)?, at: Instant::now() })
    }

    /// CPU used between `self` and `later`, in percent of one core.
    pub fn percent_until(&self, later: &CpuSample) -> f64 {
        let wall = later.at.duration_since(self.at).as_secs_f64();
        if wall <= 0.0 {
            return f64::NAN;
        }
        let cpu = later.ticks.saturating_sub(self.ticks) as f64 / clock_ticks_per_second();
        100.0 * cpu / wall
    }
}

/// CPU time used by a process so far (utime + stime), in seconds; `None` when it cannot be read (gone).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat_cpu_ticks(&text)? as f64 / clock_ticks_per_second())
}

/// CPU time used so far by a server made of a parent process and its children (PostgreSQL: the postmaster
/// and its backends), in seconds: the parent's own time and that of its children that ended (cutime,
/// cstime), plus the time of the children still running. A backend that ends between two readings moves
/// from the second part to the first, so the difference of two readings counts it once.
pub fn server_cpu_seconds(parent: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{parent}/stat")).ok()?;
    let mut ticks = stat_cpu_ticks(&text)? + stat_children_ticks(&text)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        if stat_parent(&text) == Some(parent) {
            ticks += stat_cpu_ticks(&text).unwrap_or(0);
        }
    }
    Some(ticks as f64 / clock_ticks_per_second())
}

/// The parent process id (field 4) of a `/proc/<pid>/stat` line.
pub fn stat_parent(stat: &str) -> Option<u32> {
    stat_fields(stat)?.nth(1)?.parse().ok()
}

/// The parent of process `pid`.
pub fn parent_of(pid: u32) -> Option<u32> {
    stat_parent(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// cutime + cstime (fields 16 and 17) of a `/proc/<pid>/stat` line: the children that ended.
fn stat_children_ticks(stat: &str) -> Option<u64> {
    let mut fields = stat_fields(stat)?.skip(13);
    let cutime: u64 = fields.next()?.parse().ok()?;
    let cstime: u64 = fields.next()?.parse().ok()?;
    Some(cutime + cstime)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let mut fields = stat_fields(stat)?;
    // After the name: field 3 (state) is the first; utime is field 14, the 12th from here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Busy CPU time of the whole machine so far (every core; all but idle and I/O wait), in seconds, from the
/// first line of `/proc/stat`.
pub fn machine_busy_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    Some(stat_busy_ticks(text.lines().next()?)? as f64 / clock_ticks_per_second())
}

/// user + nice + system + irq + softirq + steal of a `/proc/stat` `cpu` line (guest time is inside user).
fn stat_busy_ticks(line: &str) -> Option<u64> {
    let fields: Vec<u64> =
        line.strip_prefix("cpu ")?.split_whitespace().map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, steal, ..] = fields[..] else { return None };
    Some(user + nice + system + irq + softirq + steal)
}

/// The fields of a `/proc/<pid>/stat` line from field 3 (state) on. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
fn stat_fields(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat[stat.rfind(')')? + 1..].split_whitespace())
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Resident memory of a process: (VmRSS, VmHWM) in kB.
pub fn memory_kb(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Raises this process's open-file limit to `wanted` (or to the hard limit when that is not allowed);
/// returns the soft limit in force afterwards.
pub fn raise_fd_limit(wanted: u64) -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < wanted {
            // Above the hard limit only as root; otherwise up to the hard limit.
            let above = libc::rlimit { rlim_cur: wanted, rlim_max: limit.rlim_max.max(wanted) };
            let up_to_hard = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            for raised in [above, up_to_hard] {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    limit = raised;
                    break;
                }
            }
        }
    }
    limit.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "4242 (trackway (x) y) S 1 4242 4242 0 -1 4194560 1234 0 0 0 150 25 0 0 20 0 5 0 100 0 0";
        assert_eq!(stat_cpu_ticks(stat), Some(175));
        assert_eq!(stat_children_ticks(stat), Some(0));
        assert_eq!(stat_parent(stat), Some(1));
        let ended = "7 (postgres) S 1 7 7 0 -1 4194560 1234 0 0 0 150 25 300 45 20 0 5 0 100 0 0";
        assert_eq!(stat_children_ticks(ended), Some(345));
        assert_eq!(parent_of(std::process::id()), Some(std::os::unix::process::parent_id()));
        assert!(server_cpu_seconds(std::process::id()).is_some());
        assert!(CpuSample::read(None).is_some());
        assert_eq!(stat_busy_ticks("cpu  100 5 30 9000 40 1 2 3 0 0"), Some(141));
        assert_eq!(stat_busy_ticks("cpu0 100 5 30 9000 40 1 2 3 0 0"), None, "the whole machine's line only");
        assert!(machine_busy_seconds().is_some_and(|s| s > 0.0));
        assert!(memory_kb(std::process::id()).is_some_and(|(rss, hwm)| rss > 0 && hwm >= rss));
    }
}
