//! A start script runs as PID 1 of a PID namespace of its own (util-linux `unshare --pid
//! --fork --mount-proc --kill-child`, so that its nspawn's `/proc` lookups match its pids):
//! when the script dies, whatever ended it (ntd killed with SIGKILL included: ntd's
//! parent-death signal reaches `unshare`, whose `--kill-child` reaches the script), the kernel
//! kills every process of the namespace — nspawn and the container with it. Upstream's
//! run-nspawn does not tie nspawn's life to its own; outside a Nix build sandbox (itself a PID
//! namespace) a killed driver would leave the container running.
//!
//! The price: nspawn reports `X_NSPAWN_LEADER_PID` as the script's namespace numbers it, and
//! `nsenter --target` needs the pid ntd sees. [`host_pid`] finds it among the descendants of
//! `unshare`: the process whose `NSpid:` entry one level below `unshare`'s is that number.
//! Parsing is pure and unit-tested; the lookups read `/proc` and never block.

use std::path::Path;

/// The pids of a `/proc/<pid>/status` text's `NSpid:` line, outermost first.
pub fn parse_nspid(status: &str) -> Option<Vec<i32>> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    let pids: Option<Vec<i32>> = line.split_whitespace().map(|w| w.parse().ok()).collect();
    pids.filter(|p| !p.is_empty())
}

/// The pids of `text` (a `/proc/<pid>/task/<tid>/children` file).
pub fn parse_children(text: &str) -> impl Iterator<Item = i32> + '_ {
    text.split_ascii_whitespace().filter_map(|w| w.parse().ok())
}

/// The pid, as ntd sees it, of the process that the namespace one level below `wrapper`'s
/// (the `unshare` process's) numbers `ns_pid`, among `wrapper`'s descendants.
pub fn host_pid(wrapper: i32, ns_pid: i32) -> Option<i32> {
    let depth = parse_nspid(&status(wrapper)?)?.len();
    let mut todo = vec![wrapper];
    let mut seen = 0usize;
    while let Some(pid) = todo.pop() {
        seen += 1;
        if seen > 100_000 {
            return None;
        }
        if let Some(ns) = status(pid).as_deref().and_then(parse_nspid) {
            if ns.get(depth) == Some(&ns_pid) {
                return Some(pid);
            }
        }
        let tasks = Path::new("/proc").join(pid.to_string()).join("task");
        for task in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            todo.extend(parse_children(&children));
        }
    }
    None
}

fn status(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nspid_lists_every_level_outermost_first() {
        let status = "Name:\tsystemd\nTgid:\t812\nNSpid:\t812\t7\t1\nPPid:\t800\n";
        assert_eq!(parse_nspid(status), Some(vec![812, 7, 1]));
        assert_eq!(parse_nspid("Name:\tx\nNSpid:\t42\n"), Some(vec![42]));
        assert_eq!(parse_nspid("Name:\tx\n"), None);
        assert_eq!(parse_nspid("NSpid:\t4 x\n"), None);
    }

    #[test]
    fn children_are_whitespace_separated_pids() {
        assert_eq!(
            parse_children("12 345 \n").collect::<Vec<_>>(),
            vec![12, 345]
        );
        assert_eq!(parse_children("").count(), 0);
    }

    #[test]
    fn a_process_is_found_by_its_own_number_in_its_own_namespace() {
        // Without a namespace below it, a process's number one level down is none.
        let me = i32::try_from(std::process::id()).unwrap();
        assert_eq!(host_pid(me, me), None);
    }
}
