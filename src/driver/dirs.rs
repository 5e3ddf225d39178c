//! Where the run's unix sockets live.
//!
//! Upstream puts every socket below its runtime directory (`$XDG_RUNTIME_DIR`, else
//! `$TMPDIR`…), and so does ntd, unless a socket path would not fit the 108 bytes of
//! `sun_path` (a long `TMPDIR` in a deep build directory). Then that socket goes into a short
//! private directory (mode 0700, under `/tmp` or `/dev/shm`), created on first need and
//! removed at the end of the run; the switch is logged at debug level. Disk images and other
//! state stay in the runtime directory.

use crate::log::Logger;
use std::io;
use std::path::{Path, PathBuf};

/// Where short private directories may be made, in order of preference.
const SHORT_BASES: &[&str] = &["/tmp", "/dev/shm"];

/// The runtime directory and, once needed, the short one for sockets.
#[derive(Debug)]
pub(super) struct SocketDirs {
    runtime: PathBuf,
    short: Option<PathBuf>,
}

impl SocketDirs {
    pub fn new(runtime: PathBuf) -> Self {
        SocketDirs {
            runtime,
            short: None,
        }
    }

    /// The directory under which a socket at relative path `rel` should live: the runtime
    /// directory if `runtime/rel` has at most `max` bytes, else the short private one.
    pub fn base_for(&mut self, rel: &Path, max: usize, log: &mut Logger) -> io::Result<PathBuf> {
        let fits = |base: &Path| base.join(rel).as_os_str().len() <= max;
        if fits(&self.runtime) {
            return Ok(self.runtime.clone());
        }
        if self.short.is_none() {
            let dir = make_short_dir()?;
            log.debug(
                None,
                &format!(
                    "the runtime directory {} is too long for unix socket paths; sockets that \
                     do not fit go into {}",
                    self.runtime.display(),
                    dir.display()
                ),
            );
            self.short = Some(dir);
        }
        let short = self.short.clone().unwrap_or_default();
        if fits(&short) {
            Ok(short)
        } else {
            // Still too long (a very long machine name): the caller's own length check
            // reports it with advice.
            Ok(self.runtime.clone())
        }
    }

    /// Remove the short directory (everything in it is the run's own).
    pub fn remove(&mut self) {
        if let Some(dir) = self.short.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A fresh 0700 directory `ntd-<pid>-<random>` under the first usable base.
fn make_short_dir() -> io::Result<PathBuf> {
    let mut last = io::Error::other("no directory for sockets");
    for base in SHORT_BASES {
        let mut rnd = [0u8; 4];
        let _ = rustix::rand::getrandom(&mut rnd, rustix::rand::GetRandomFlags::empty());
        let dir = Path::new(base).join(format!(
            "ntd-{}-{:08x}",
            std::process::id(),
            u32::from_le_bytes(rnd)
        ));
        match rustix::fs::mkdir(&dir, rustix::fs::Mode::from_raw_mode(0o700)) {
            Ok(()) => return Ok(dir),
            Err(e) => last = e.into(),
        }
    }
    Err(last)
}

/// Upstream's tmp dir: `$XDG_RUNTIME_DIR`, else Python's `tempfile.gettempdir()` order.
pub fn runtime_dir() -> PathBuf {
    for var in ["XDG_RUNTIME_DIR", "TMPDIR", "TEMP", "TMP"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return PathBuf::from(v);
        }
    }
    PathBuf::from("/tmp")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Level;

    #[test]
    fn short_runtime_dir_is_used_as_it_is() {
        let mut d = SocketDirs::new(PathBuf::from("/run/user/0"));
        let mut log = Logger::new(Level::Info, vec![]);
        let base = d.base_for(Path::new("vde1.ctl"), 92, &mut log).unwrap();
        assert_eq!(base, Path::new("/run/user/0"));
        assert!(d.short.is_none());
    }

    #[test]
    fn long_runtime_dir_gets_a_private_short_dir_removed_at_the_end() {
        let long = PathBuf::from("/".to_owned() + &"x".repeat(120));
        let mut d = SocketDirs::new(long.clone());
        let mut log = Logger::new(Level::Info, vec![]);
        let base = d
            .base_for(Path::new("vm-state-a/monitor"), 107, &mut log)
            .unwrap();
        assert_ne!(base, long);
        let meta = std::fs::metadata(&base).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert_eq!(d.base_for(Path::new("x"), 107, &mut log).unwrap(), base);
        d.remove();
        assert!(!base.exists());
    }
}
