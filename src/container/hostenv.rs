//! What the host must offer before the first container starts: upstream's checks and repairs
//! (`_init_nspawn_environment`: root, a writable `/run`, `/var/run` → `/run`, a cgroup
//! hierarchy, `/etc/os-release`, a machine id), and ntd's own isolation of a run's container
//! network ([`isolate`]).
//!
//! Isolation: ntd moves itself into a private network namespace and a private mount namespace
//! before it creates any bridge or tap. Every bridge `br<V>`, tap `vde-tap<V>`, veth and named
//! netns of the run then lives and dies with the run: the kernel removes them when the last
//! process of the namespace is gone, whatever ended ntd (SIGKILL included); two runs on one
//! host never share a `br1`; upstream's host addresses `192.168.V.254` never reach the host's
//! routing table. In the new mount namespace `/sys` is mounted again (sysfs shows the network
//! namespace of whoever mounted it, and `run-nspawn` looks for `/sys/class/net/br<V>`) with
//! the cgroup tree carried over, and tmpfs covers `/run/netns`, `/run/systemd/nspawn` and
//! `/run/nixos-nspawn`, so `ip netns add` entries and nspawn's runtime files vanish with the
//! run too. Only the calling thread changes namespaces: call it while ntd is single-threaded,
//! before spawning anything. This module never blocks and never spawns.

use super::cgroup::{CGROUP1_MAGIC, CGROUP2_MAGIC};
use rustix::fs::{Access, Mode};
use rustix::mount::{MountFlags, MountPropagationFlags};
use rustix::thread::UnshareFlags;
use std::fmt;
use std::io;
use std::path::Path;

/// Runtime directories that get a private tmpfs in an isolated run.
pub const PRIVATE_RUN_DIRS: [&str; 3] = ["/run/netns", "/run/systemd/nspawn", "/run/nixos-nspawn"];

#[derive(Debug)]
pub enum HostEnvError {
    /// Upstream's assertion, word for word.
    NotRoot(u32),
    Step {
        what: String,
        source: io::Error,
    },
}

impl fmt::Display for HostEnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostEnvError::NotRoot(uid) => {
                write!(f, "systemd-nspawn requires root to work. You are {uid}")
            }
            HostEnvError::Step { what, source } => write!(f, "cannot {what}: {source}"),
        }
    }
}

impl std::error::Error for HostEnvError {}

fn step<T>(
    what: impl FnOnce() -> String,
    r: Result<T, impl Into<io::Error>>,
) -> Result<T, HostEnvError> {
    r.map_err(|e| HostEnvError::Step {
        what: what(),
        source: e.into(),
    })
}

pub fn check_root() -> Result<(), HostEnvError> {
    let uid = rustix::process::geteuid().as_raw();
    if uid != 0 {
        return Err(HostEnvError::NotRoot(uid));
    }
    Ok(())
}

/// Which cgroup hierarchy is visible, from the `statfs` types of `/sys/fs/cgroup` and of its
/// `unified` and `systemd` entries (systemd decides the same way; a hidden mount, which
/// `/proc/self/mountinfo` still lists, does not count). Upstream only accepts cgroup2 at
/// `/sys/fs/cgroup` itself and mounts one over anything else; nspawn runs on hybrid and legacy
/// hosts too, so ntd leaves those alone and mounts cgroup2 only where there is none.
pub fn cgroup_tree_visible(root: Option<i64>, unified: Option<i64>, systemd: Option<i64>) -> bool {
    root == Some(CGROUP2_MAGIC) || unified == Some(CGROUP2_MAGIC) || systemd == Some(CGROUP1_MAGIC)
}

fn fs_type(path: &str) -> Option<i64> {
    super::cgroup::fs_type(Path::new(path))
}

/// A machine id as `systemd-machine-id-setup` writes a random one: 32 lowercase hex digits.
pub fn format_machine_id(bytes: [u8; 16]) -> String {
    let mut s: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    s.push('\n');
    s
}

/// Upstream's `_init_nspawn_environment`, step by step; `notes` says what was repaired.
pub fn prepare(notes: &mut Vec<String>) -> Result<(), HostEnvError> {
    check_root()?;
    if rustix::fs::access("/run", Access::WRITE_OK).is_err() {
        step(|| "create /run".into(), std::fs::create_dir_all("/run"))?;
        mount_tmpfs("/run")?;
        step(
            || "create /run/netns".into(),
            std::fs::create_dir_all("/run/netns"),
        )?;
        notes.push("mounted a tmpfs on /run (it was not writable)".into());
    }
    let same = match (std::fs::metadata("/var/run"), std::fs::metadata("/run")) {
        (Ok(a), Ok(b)) => {
            use std::os::unix::fs::MetadataExt;
            a.dev() == b.dev() && a.ino() == b.ino()
        }
        _ => false,
    };
    if !same && std::fs::symlink_metadata("/var/run").is_err() {
        step(|| "create /var".into(), std::fs::create_dir_all("/var"))?;
        step(
            || "link /var/run to /run".into(),
            std::os::unix::fs::symlink("/run", "/var/run"),
        )?;
        notes.push("linked /var/run to /run".into());
    }
    let visible = cgroup_tree_visible(
        fs_type("/sys/fs/cgroup"),
        fs_type("/sys/fs/cgroup/unified"),
        fs_type("/sys/fs/cgroup/systemd"),
    );
    if !visible {
        step(
            || "create /sys/fs/cgroup".into(),
            std::fs::create_dir_all("/sys/fs/cgroup"),
        )?;
        step(
            || "mount cgroup2 on /sys/fs/cgroup".into(),
            rustix::mount::mount(
                "none",
                "/sys/fs/cgroup",
                "cgroup2",
                MountFlags::empty(),
                None,
            ),
        )?;
        notes.push("mounted cgroup2 on /sys/fs/cgroup".into());
    }
    if !Path::new("/etc/os-release").is_file() {
        step(
            || "create /etc/os-release".into(),
            std::fs::write("/etc/os-release", ""),
        )?;
        notes.push("created an empty /etc/os-release (systemd-nspawn requires one)".into());
    }
    let id_ok = std::fs::metadata("/etc/machine-id").is_ok_and(|m| m.len() > 0);
    if !id_ok {
        let mut bytes = [0u8; 16];
        step(
            || "get random bytes".into(),
            rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty()),
        )?;
        step(
            || "write /etc/machine-id".into(),
            std::fs::write("/etc/machine-id", format_machine_id(bytes)),
        )?;
        notes.push("wrote a random /etc/machine-id".into());
    }
    Ok(())
}

fn mount_tmpfs(dir: &str) -> Result<(), HostEnvError> {
    step(
        || format!("mount a tmpfs on {dir}"),
        rustix::mount::mount(
            "tmpfs",
            dir,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            Some(c"mode=0755"),
        ),
    )
}

/// Move the calling thread (ntd, single-threaded) into a private mount namespace and a new
/// network namespace, then [`after_new_netns`].
pub fn isolate() -> Result<(), HostEnvError> {
    private_mounts()?;
    private_network()
}

/// Move the calling thread (ntd, single-threaded) into a mount namespace of its own, whose
/// mounts do not propagate back: [`prepare`]'s repairs (a tmpfs on a read-only `/run`) then
/// stay with the run.
pub fn private_mounts() -> Result<(), HostEnvError> {
    // SAFETY: the flag does not touch the fd table (no CLONE_FILES); ntd is single-threaded
    // here, so no other thread observes the change.
    step(|| "create a mount namespace".into(), unsafe {
        rustix::thread::unshare_unsafe(UnshareFlags::NEWNS)
    })?;
    step(
        || "make the mounts private".into(),
        rustix::mount::mount_change(
            "/",
            MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
        ),
    )
}

/// After [`private_mounts`] (and [`prepare`]): a new network namespace, then
/// [`after_new_netns`].
pub fn private_network() -> Result<(), HostEnvError> {
    // SAFETY: as in private_mounts.
    step(|| "create a network namespace".into(), unsafe {
        rustix::thread::unshare_unsafe(UnshareFlags::NEWNET)
    })?;
    after_new_netns()
}

/// In a fresh network namespace with private mounts: sysfs for that namespace (keeping the
/// cgroup tree), private runtime directories, the loopback link up.
pub fn after_new_netns() -> Result<(), HostEnvError> {
    let cgroup = Path::new("/sys/fs/cgroup");
    let keep = std::env::temp_dir().join(format!(
        ".ntd-cgroup-{}",
        rustix::process::getpid().as_raw_nonzero()
    ));
    let had_cgroup =
        cgroup.is_dir() && std::fs::read_dir(cgroup).is_ok_and(|mut d| d.next().is_some());
    if had_cgroup {
        step(
            || format!("create {}", keep.display()),
            rustix::fs::mkdir(&keep, Mode::from_raw_mode(0o700)),
        )?;
        step(
            || "set the cgroup tree aside".into(),
            rustix::mount::mount_bind_recursive(cgroup, &keep),
        )?;
    }
    let sysfs = step(
        || "mount sysfs for the new network namespace".into(),
        rustix::mount::mount(
            "sysfs",
            "/sys",
            "sysfs",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            None,
        ),
    );
    if had_cgroup {
        let moved = step(
            || "put the cgroup tree back".into(),
            rustix::mount::mount_move(&keep, cgroup),
        );
        let _ = std::fs::remove_dir(&keep);
        moved?;
    }
    sysfs?;
    for dir in PRIVATE_RUN_DIRS {
        step(|| format!("create {dir}"), std::fs::create_dir_all(dir))?;
        mount_tmpfs(dir)?;
    }
    let mut nl = step(
        || "open netlink".into(),
        crate::netlink::Netlink::open().map_err(io::Error::other),
    )?;
    if let Ok(Some(lo)) = nl.link_index("lo") {
        step(
            || "bring lo up".into(),
            nl.set_up(lo, "lo").map_err(io::Error::other),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_tree_is_unified_hybrid_or_legacy_but_not_a_bare_directory() {
        const TMPFS: i64 = 0x0102_1994;
        const SYSFS: i64 = 0x6265_6572;
        assert!(cgroup_tree_visible(Some(CGROUP2_MAGIC), None, None));
        assert!(cgroup_tree_visible(
            Some(TMPFS),
            Some(CGROUP2_MAGIC),
            Some(CGROUP1_MAGIC)
        ));
        assert!(cgroup_tree_visible(Some(TMPFS), None, Some(CGROUP1_MAGIC)));
        assert!(!cgroup_tree_visible(Some(SYSFS), None, None));
        assert!(!cgroup_tree_visible(Some(TMPFS), None, None));
        assert!(!cgroup_tree_visible(None, None, None));
    }

    #[test]
    fn machine_id_is_32_hex_digits_and_a_newline() {
        let id = format_machine_id([0xab; 16]);
        assert_eq!(id.len(), 33);
        assert!(id.starts_with("abab") && id.ends_with('\n'));
    }

    #[test]
    fn not_root_message_is_upstreams() {
        assert_eq!(
            HostEnvError::NotRoot(1000).to_string(),
            "systemd-nspawn requires root to work. You are 1000"
        );
    }
}
