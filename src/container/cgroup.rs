//! A cgroup of its own for every container's start script. `systemd-nspawn --keep-unit` puts
//! itself into `<its cgroup>/supervisor` and the container into `<its cgroup>/payload`; two
//! containers started from the same cgroup therefore share one `payload`, and each one's
//! systemd then manages (and on shutdown kills) the other's units. ntd creates
//! `ntd-<pid namespace>-<driver pid>-<n>` below its own cgroup in each hierarchy nspawn uses (the unified
//! one, and the named `systemd` one on hybrid hosts), moves the start script there before it
//! execs ([`join_fds`] in the forked child), and removes the directories when the container
//! is gone. Parsing `/proc/self/cgroup` and `/proc/self/mountinfo` is pure and unit-tested.

use rustix::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use rustix::fs::{Mode, OFlags};
use std::io;
use std::path::{Path, PathBuf};

/// One mount of `/proc/self/mountinfo` that matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The path inside the mounted file system that is the mount's root.
    pub root: String,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub super_options: String,
}

/// Undo mountinfo's octal escapes (`\040` is a space).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.len() >= i + 4
            && b[i] == b'\\'
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c));
        if octal {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mounts of a `/proc/self/mountinfo` text (malformed lines skipped).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let head: Vec<&str> = head.split(' ').collect();
            let tail: Vec<&str> = tail.split(' ').collect();
            if head.len() < 6 || tail.len() < 3 {
                return None;
            }
            Some(Mount {
                root: unescape(head[3]),
                mount_point: PathBuf::from(unescape(head[4])),
                fs_type: tail[0].to_owned(),
                super_options: tail[2].to_owned(),
            })
        })
        .collect()
}

/// `statfs` magic of a cgroup2 file system (the unified hierarchy).
pub const CGROUP2_MAGIC: i64 = 0x6367_7270;
/// `statfs` magic of a cgroup (v1) file system (the named `systemd` hierarchy).
pub const CGROUP1_MAGIC: i64 = 0x0027_e0eb;

/// The `statfs` type of `path`, if it can be read.
pub fn fs_type(path: &Path) -> Option<i64> {
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between architectures
    rustix::fs::statfs(path).ok().map(|s| s.f_type as i64)
}

/// Where this process's cgroup lives in each hierarchy nspawn uses: the unified (`0::`) one
/// and the named `name=systemd` one, as directories under their mount points, each with the
/// `statfs` type it must have (a mount that a later one hides is still listed in mountinfo:
/// its path then leads somewhere else).
pub fn own_cgroup_dirs(proc_cgroup: &str, mounts: &[Mount]) -> Vec<(PathBuf, i64)> {
    let mut dirs = Vec::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let wanted = |m: &&Mount| match controllers {
            "" => m.fs_type == "cgroup2",
            "name=systemd" => {
                m.fs_type == "cgroup" && m.super_options.split(',').any(|o| o == "name=systemd")
            }
            _ => false,
        };
        // The mount whose root contains our path (a bind of a sub-tree has a longer root).
        let best = mounts
            .iter()
            .filter(wanted)
            .filter(|m| within(path, &m.root))
            .max_by_key(|m| m.root.len());
        if let Some(m) = best {
            let rel = path[m.root.len()..].trim_start_matches('/');
            let dir = if rel.is_empty() {
                m.mount_point.clone()
            } else {
                m.mount_point.join(rel)
            };
            let magic = if controllers.is_empty() {
                CGROUP2_MAGIC
            } else {
                CGROUP1_MAGIC
            };
            dirs.push((dir, magic));
        }
    }
    dirs
}

/// `path` is `root` or below it (`/a/b` is within `/a`, `/ab` is not).
fn within(path: &str, root: &str) -> bool {
    root == "/"
        || path == root
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The cgroup directories of one container's start script, with `cgroup.procs` open for
/// writing (opened before the fork, written by the child).
#[derive(Debug)]
pub struct ContainerCgroup {
    dirs: Vec<PathBuf>,
    procs: Vec<OwnedFd>,
}

impl ContainerCgroup {
    /// Create `leaf` below ntd's own cgroup in each hierarchy. Fails if no hierarchy is
    /// writable (then the caller starts the script where ntd is, as upstream does).
    pub fn create(leaf: &str) -> io::Result<ContainerCgroup> {
        let proc_cgroup = std::fs::read_to_string("/proc/self/cgroup")?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let parents = own_cgroup_dirs(&proc_cgroup, &parse_mountinfo(&mountinfo));
        let mut cg = ContainerCgroup {
            dirs: Vec::new(),
            procs: Vec::new(),
        };
        let mut last_error = None;
        for (parent, magic) in parents {
            if fs_type(&parent) != Some(magic) {
                continue;
            }
            sweep_stale(&parent);
            let dir = parent.join(leaf);
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            }
            cg.dirs.push(dir.clone());
            match rustix::fs::open(
                dir.join("cgroup.procs"),
                OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => cg.procs.push(fd),
                Err(e) => last_error = Some(e.into()),
            }
        }
        if cg.procs.is_empty() {
            cg.remove();
            return Err(last_error.unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "no cgroup hierarchy found")
            }));
        }
        Ok(cg)
    }

    /// The open `cgroup.procs` fds, for [`join_fds`] in the forked child (they stay open as
    /// long as this value lives, which must outlast the spawn).
    pub fn procs_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(|fd| fd.as_raw_fd()).collect()
    }

    /// The directories (for logs).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// SIGKILL every process left in the cgroups (a start script that exited without waiting
    /// for its nspawn, as upstream's run-nspawn does on SIGTERM). True if none was left.
    pub fn kill_all(&self) -> bool {
        let mut empty = true;
        for dir in &self.dirs {
            empty &= kill_tree(dir);
        }
        empty
    }

    /// Remove the directories and whatever nspawn left below them (`supervisor`, `payload`),
    /// deepest first. A cgroup that still has processes stays (EBUSY): returns false then.
    pub fn remove(&mut self) -> bool {
        self.procs.clear();
        let mut all = true;
        for dir in std::mem::take(&mut self.dirs) {
            all &= remove_tree(&dir);
        }
        all
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

/// In the forked child, before exec: move the calling process into every hierarchy's
/// directory (writing `0` names the writer). Async-signal-safe: only `write(2)`.
pub fn join_fds(fds: &[RawFd]) -> io::Result<()> {
    for &raw in fds {
        // SAFETY: `raw` comes from [`ContainerCgroup::procs_fds`] of a cgroup that outlives the
        // spawn; fork duplicated the fd table, so the fd is open in the child too.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        rustix::io::write(fd, b"0")?;
    }
    Ok(())
}

/// The cgroup of container `n` of the ntd run with pid `pid` in pid namespace `pidns`:
/// `ntd-<pidns>-<pid>-<n>` (a pid alone names no process outside its namespace).
pub fn leaf_name(pidns: u64, pid: u32, n: usize) -> String {
    format!("ntd-{pidns}-{pid}-{n}")
}

/// The pid namespace and pid of the ntd run that named a cgroup (see [`leaf_name`]).
pub fn leaf_owner(name: &str) -> Option<(u64, u32)> {
    let mut parts = name.strip_prefix("ntd-")?.split('-');
    let (ns, pid, n) = (parts.next()?, parts.next()?, parts.next()?);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if parts.next().is_some() || !digits(ns) || !digits(n) {
        return None;
    }
    let pid = pid.parse().ok().filter(|&p| p > 0)?;
    Some((ns.parse().ok()?, pid))
}

/// This process's pid namespace (the inode of `/proc/self/ns/pid`; 0 if unreadable).
pub fn own_pid_namespace() -> u64 {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .and_then(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
        })
        .unwrap_or(0)
}

/// Remove the cgroups of ntd runs that are gone (killed before their cleanup, SIGKILL
/// included), ending what still runs in them first (an nspawn whose start script did not tie
/// it to itself): best effort, a cgroup whose processes do not die at once stays. Only runs
/// of this pid namespace are judged: whether another one's pid lives cannot be seen here.
fn sweep_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let ns = own_pid_namespace();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some((owner_ns, pid)) = name.to_str().and_then(leaf_owner) else {
            continue;
        };
        let dead = !Path::new(&format!("/proc/{pid}")).exists();
        if owner_ns == ns && pid != std::process::id() && dead {
            kill_tree(&e.path());
            remove_tree(&e.path());
        }
    }
}

/// The pids in a `cgroup.procs` text.
pub fn parse_procs(text: &str) -> Vec<i32> {
    text.split_ascii_whitespace()
        .filter_map(|w| w.parse().ok())
        .filter(|&p| p > 0)
        .collect()
}

/// SIGKILL every process of `dir` and its sub-cgroups; true if there was none.
fn kill_tree(dir: &Path) -> bool {
    let mut empty = true;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                empty &= kill_tree(&e.path());
            }
        }
    }
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in parse_procs(&procs) {
        empty = false;
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    empty
}

/// `rmdir` a cgroup directory and its sub-cgroups, deepest first (cgroupfs directories hold
/// only control files, which go with the directory).
fn remove_tree(dir: &Path) -> bool {
    let mut ok = true;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                ok &= remove_tree(&e.path());
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => ok,
        Err(e) if e.kind() == io::ErrorKind::NotFound => ok,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
27 26 0:25 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
28 26 0:26 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
29 26 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
";

    #[test]
    fn procs_lists_pids_and_skips_junk() {
        assert_eq!(parse_procs("12\n345\n\nx\n0\n"), vec![12, 345]);
        assert!(parse_procs("").is_empty());
    }

    #[test]
    fn hybrid_host_yields_unified_and_named_systemd_dirs() {
        let mounts = parse_mountinfo(HYBRID);
        let dirs = own_cgroup_dirs("9:name=systemd:/\n1:cpu:/\n0::/\n", &mounts);
        assert_eq!(
            dirs,
            [
                (PathBuf::from("/sys/fs/cgroup/systemd"), CGROUP1_MAGIC),
                (PathBuf::from("/sys/fs/cgroup/unified"), CGROUP2_MAGIC)
            ]
        );
    }

    #[test]
    fn unified_host_with_a_nested_cgroup_and_a_bound_subtree() {
        let text = "\
30 1 0:28 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate
31 1 0:28 /user.slice /mnt/cg\\040x rw - cgroup2 cgroup2 rw
";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts[1].mount_point, PathBuf::from("/mnt/cg x"));
        let dirs = own_cgroup_dirs("0::/user.slice/session-1.scope\n", &mounts);
        assert_eq!(
            dirs,
            [(PathBuf::from("/mnt/cg x/session-1.scope"), CGROUP2_MAGIC)]
        );
        let dirs = own_cgroup_dirs("0::/system.slice/nix-daemon.service\n", &mounts);
        assert_eq!(
            dirs,
            [(
                PathBuf::from("/sys/fs/cgroup/system.slice/nix-daemon.service"),
                CGROUP2_MAGIC
            )]
        );
    }

    #[test]
    fn leaf_owner_reads_only_ntds_names() {
        assert_eq!(
            leaf_owner(&leaf_name(4026531836, 4242, 0)),
            Some((4026531836, 4242))
        );
        assert_eq!(leaf_owner("ntd-7-4242-17"), Some((7, 4242)));
        for other in [
            "ntd-4242-0",
            "ntd-7-x-1",
            "ntd-7-0-1",
            "ntd-7-12-",
            "ntd-7-12-a",
            "ntd-7-12-1-2",
            "user.slice",
        ] {
            assert_eq!(leaf_owner(other), None, "{other}");
        }
    }

    #[test]
    fn malformed_lines_and_unknown_hierarchies_are_skipped() {
        assert!(parse_mountinfo("garbage\n1 2 3 - x\n").is_empty());
        let mounts = parse_mountinfo(HYBRID);
        assert!(own_cgroup_dirs("4:memory:/x\nnonsense\n", &mounts).is_empty());
        assert!(own_cgroup_dirs("0::/x\n", &[]).is_empty());
        assert!(within("/a/b", "/a") && within("/a", "/a") && !within("/ab", "/a"));
    }
}
