//! The host programs a container needs, found once in the driver's `PATH` (as upstream's
//! `shutil.which`): `nsenter` for every command, `journalctl` for the log, `unshare` for the
//! start script's PID namespace. Their children get
//! an empty environment (`nsenter`, as upstream) or ntd's own (`journalctl`), so the path is
//! resolved here, not by the child. Pure apart from the `stat` of each candidate.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where the container helpers are (`None`: not found; the feature that needs it says so).
#[derive(Debug, Clone, Default)]
pub struct Tools {
    pub nsenter: Option<PathBuf>,
    pub journalctl: Option<PathBuf>,
    /// util-linux `unshare`: start scripts run in a PID namespace of their own.
    pub unshare: Option<PathBuf>,
}

impl Tools {
    /// Look both up in `$PATH`.
    pub fn from_env() -> Tools {
        let path = std::env::var_os("PATH").unwrap_or_default();
        Tools {
            nsenter: find_in_path(&path, "nsenter"),
            journalctl: find_in_path(&path, "journalctl"),
            unshare: find_in_path(&path, "unshare"),
        }
    }
}

/// The first executable regular file `name` in the `:`-separated `path` (empty entries, which
/// mean the current directory, are skipped: ntd never runs what the cwd offers).
pub fn find_in_path(path: &OsStr, name: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_in_path_takes_the_first_executable_and_skips_relative_dirs() {
        let base = std::env::temp_dir().join(format!("ntd-tools-{}", std::process::id()));
        let (a, b) = (base.join("a"), base.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("tool"), "").unwrap(); // not executable
        std::fs::write(b.join("tool"), "").unwrap();
        std::fs::set_permissions(b.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths([Path::new("rel"), &a, &b]).unwrap();

        let found = find_in_path(&path, "tool");

        std::fs::remove_dir_all(&base).unwrap();
        assert_eq!(found, Some(b.join("tool")));
        assert_eq!(find_in_path(OsStr::new(""), "tool"), None);
    }
}
