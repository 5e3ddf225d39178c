//! Where a container's files live (upstream's names: the state directory is the container's
//! root, the shared directory is bound at `/tmp/shared`, the notify socket sits below the
//! socket base) and the environment its start script gets. Pure.

use std::path::{Path, PathBuf};

/// Where a container's files live, as upstream names them.
#[derive(Debug, Clone)]
pub struct ContainerPaths {
    /// `vm-state-<name>`: the container's root directory (`RUN_NSPAWN_ROOT_DIR`).
    pub state_dir: PathBuf,
    /// `shared-xchg` (`RUN_NSPAWN_SHARED_DIR`).
    pub shared_dir: PathBuf,
    /// `<name>-nspawn.sock` (`NOTIFY_SOCKET`), below the socket base.
    pub notify_socket: PathBuf,
}

impl ContainerPaths {
    pub fn new(tmp_dir: &Path, socket_base: &Path, name: &str) -> ContainerPaths {
        ContainerPaths {
            state_dir: tmp_dir.join(format!("vm-state-{name}")),
            shared_dir: tmp_dir.join("shared-xchg"),
            notify_socket: socket_base.join(format!("{name}-nspawn.sock")),
        }
    }

    /// Upstream's environment of the start script, and nothing else.
    pub fn start_env(&self) -> [(&'static str, &Path); 3] {
        [
            ("RUN_NSPAWN_ROOT_DIR", &self.state_dir),
            ("RUN_NSPAWN_SHARED_DIR", &self.shared_dir),
            ("NOTIFY_SOCKET", &self.notify_socket),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_environment_are_upstreams() {
        let p = ContainerPaths::new(Path::new("/tmp/x"), Path::new("/tmp/s"), "c1");
        let env: Vec<(&str, &Path)> = p.start_env().to_vec();
        assert_eq!(
            env,
            [
                ("RUN_NSPAWN_ROOT_DIR", Path::new("/tmp/x/vm-state-c1")),
                ("RUN_NSPAWN_SHARED_DIR", Path::new("/tmp/x/shared-xchg")),
                ("NOTIFY_SOCKET", Path::new("/tmp/s/c1-nspawn.sock")),
            ]
        );
    }
}
