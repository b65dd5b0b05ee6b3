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

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: field 3 (state) is the first; utime is field 14, the 12th from here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
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
        assert!(CpuSample::read(None).is_some());
        assert!(memory_kb(std::process::id()).is_some_and(|(rss, hwm)| rss > 0 && hwm >= rss));
    }
}
