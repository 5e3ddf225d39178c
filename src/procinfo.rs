//! The driver's own resource usage (peak RSS, CPU time), read from `/proc/self`.
//!
//! Reported at exit so users can see what ntd itself costs apart from QEMU and Python. This
//! module only reads; a missing or unreadable `/proc` yields `None`.

/// Peak resident set size of this process in KiB (`VmHWM`).
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// User + system CPU time of this process in seconds (children not included).
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after "pid (comm) ".
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let hz = rustix::param::clock_ticks_per_second();
    if hz == 0 {
        return None;
    }
    Some((utime + stime) as f64 / hz as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_usage_is_readable_and_plausible() {
        let rss = peak_rss_kib().expect("VmHWM");
        assert!(rss > 100, "{rss}");
        let cpu = cpu_seconds().expect("stat");
        assert!((0.0..3600.0).contains(&cpu));
    }
}
