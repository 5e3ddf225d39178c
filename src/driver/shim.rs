//! The driver's end of the Python shim: the child process, its two protocol pipes and the
//! requests read from them.
//!
//! [`ShimLink`] spawns `python3 -m test_driver` with the package written into a private
//! directory, reads and decodes request lines as they arrive (queued for the driver, which
//! runs one at a time), writes replies without blocking and reaps the child through its
//! pidfd. It never interprets a request.

use super::DriverError;
use crate::child::{Child, ExitInfo};
use crate::reactor::{Ctx, LoopMember, Owner};
use crate::rpc::ops::{DecodeError, Request};
use crate::rpc::Channel;
use crate::shim::{self, ShimError};
use mio::event::Event;
use mio::unix::SourceFd;
use mio::{Interest, Registry};
use rustix::process::Signal;
use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The shim's fds on the poll loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Requests = 0,
    Replies = 1,
    Pidfd = 2,
}

impl TryFrom<usize> for Slot {
    type Error = usize;

    fn try_from(n: usize) -> Result<Self, usize> {
        match n {
            0 => Ok(Slot::Requests),
            1 => Ok(Slot::Replies),
            2 => Ok(Slot::Pidfd),
            other => Err(other),
        }
    }
}

/// A running shim. See the module documentation.
pub(super) struct ShimLink {
    child: Child,
    chan: Channel,
    exit: Option<ExitInfo>,
    /// The written package (removed at close).
    dir: PathBuf,
    /// Decoded requests not yet taken by the driver.
    incoming: VecDeque<Result<Request, DecodeError>>,
}

impl ShimLink {
    /// Write the package below `tmp_dir` and start the interpreter.
    pub fn spawn(
        tmp_dir: &Path,
        env: &[(String, String)],
        registry: &Registry,
    ) -> Result<ShimLink, DriverError> {
        let dir = tmp_dir.join(format!("ntd-shim-{}", std::process::id()));
        // Private: the package is code the driver runs.
        rustix::fs::mkdir(&dir, rustix::fs::Mode::from_raw_mode(0o700))
            .or_else(|e| {
                if e == rustix::io::Errno::EXIST {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| {
                DriverError::Shim(ShimError::PackageDir {
                    dir: dir.clone(),
                    source: e.into(),
                })
            })?;
        shim::write_package(&dir).map_err(|e| DriverError::Shim(ShimError::Package(e)))?;
        let spawned = shim::spawn(&dir, env).map_err(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            DriverError::Shim(ShimError::Spawn(e))
        })?;
        let owner = Owner::Shim;
        let chan = Channel::new(
            spawned.from_shim,
            spawned.to_shim,
            owner.token(Slot::Replies as usize),
        );
        let link = ShimLink {
            child: spawned.child,
            chan,
            exit: None,
            dir,
            incoming: VecDeque::new(),
        };
        let registered = link
            .chan
            .register_rx(registry, owner.token(Slot::Requests as usize))
            .map_err(|e| DriverError::Setup("cannot poll the shim pipe", e))
            .and_then(|()| {
                registry
                    .register(
                        &mut SourceFd(&link.child.pidfd().as_raw_fd()),
                        owner.token(Slot::Pidfd as usize),
                        Interest::READABLE,
                    )
                    .map_err(|e| DriverError::Setup("cannot poll the shim process", e))
            });
        if let Err(e) = registered {
            // Nothing will ever read this child's pipes: do not leave it behind.
            link.child.kill_and_reap();
            let _ = std::fs::remove_dir_all(&link.dir);
            return Err(e);
        }
        Ok(link)
    }

    /// How the shim exited, once it has.
    pub fn exit(&self) -> Option<ExitInfo> {
        self.exit
    }

    /// Read whatever request lines have arrived.
    pub fn read_requests(&mut self, registry: &Registry) {
        let mut got = Vec::new();
        self.chan.read(registry, &mut got);
        self.incoming.extend(got);
    }

    /// The oldest request not yet taken.
    pub fn next_request(&mut self) -> Option<Result<Request, DecodeError>> {
        self.incoming.pop_front()
    }

    /// Send a reply line.
    pub fn send(&mut self, registry: &Registry, line: &str) {
        self.chan.send(registry, line);
    }

    /// SIGKILL the shim (the run is being cut short); its pidfd reports the exit.
    pub fn kill(&self) {
        if self.exit.is_none() {
            self.child.signal(Signal::KILL);
        }
    }

    fn reap(&mut self, registry: &Registry) {
        if let Some(info) = self.child.try_reap() {
            let _ = registry.deregister(&mut SourceFd(&self.child.pidfd().as_raw_fd()));
            self.exit = Some(info);
        }
    }

    /// Close the pipes and remove the package directory.
    pub fn close(&mut self, registry: &Registry) {
        self.chan.close(registry);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl LoopMember for ShimLink {
    fn on_event(&mut self, cx: &mut Ctx<'_>, slot: usize, _ev: &Event) {
        match Slot::try_from(slot) {
            Ok(Slot::Requests) => self.read_requests(cx.registry),
            Ok(Slot::Replies) => self.chan.flush(cx.registry),
            Ok(Slot::Pidfd) => self.reap(cx.registry),
            Err(n) => cx
                .log
                .warning(None, &format!("event for unknown shim slot {n} ignored")),
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        None
    }

    fn on_timer(&mut self, _cx: &mut Ctx<'_>, _now: Instant) {}
}
