//! The run's vlans: one in-process switch per configured vlan, started before any machine
//! (start scripts connect to it through `QEMU_VDE_SOCKET_<n>`), on the poll loop like every
//! other member, and stopped after the last machine is gone, with its counters logged.

use super::{Driver, DriverError};
use crate::log::Logger;
use crate::reactor::{Ctx, LoopMember, Owner};
use crate::vde::{Switch, SwitchConfig, SwitchEvent};
use mio::event::Event;
use std::path::PathBuf;
use std::time::Instant;

impl Driver {
    /// One in-process switch per vlan, listening before any machine can start.
    pub(super) fn start_vlans(&mut self) -> Result<(), DriverError> {
        if self.opts.vlans.is_empty() {
            return Ok(());
        }
        if let Some(dir) = &self.opts.capture_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| DriverError::Setup("cannot create the capture directory", e))?;
        }
        self.log.begin(None, "start all VLans");
        for (i, nr) in self.opts.vlans.clone().into_iter().enumerate() {
            self.log.log("start vlan");
            let name = PathBuf::from(format!("vde{nr}.ctl"));
            let base = self
                .sockets
                .base_for(&name, crate::vde::MAX_DIR_LEN, &mut self.log)
                .map_err(|e| DriverError::Setup("cannot create a directory for vlan sockets", e))?;
            let dir = base.join(name);
            let owner = Owner::Switch(i).id();
            let registry = self.poll.registry();
            let mut sw = match Switch::create(nr, &dir, owner, registry, SwitchConfig::default()) {
                Ok(sw) => sw,
                Err(e) => {
                    self.log.end(false);
                    return Err(DriverError::Machine(format!("cannot start vlan {nr}: {e}")));
                }
            };
            if let Some(cdir) = &self.opts.capture_dir {
                let path = cdir.join(format!("vlan{nr}.pcap"));
                match sw.start_capture(&path) {
                    Ok(()) => self
                        .log
                        .log(&format!("capturing vlan {nr} to {}", path.display())),
                    Err(e) => self.log.warning(None, &format!("vlan {nr}: {e}")),
                }
            }
            self.log.log(&format!(
                "running vlan (in-process switch in pid {}; ctl {})",
                std::process::id(),
                sw.dir().display()
            ));
            self.extra_env.push((
                format!("QEMU_VDE_SOCKET_{nr}"),
                sw.dir().display().to_string(),
            ));
            self.switches.push(sw);
        }
        self.log.end(true);
        Ok(())
    }

    /// Stop every switch after the machines: log its counters, close its ports, remove its
    /// files.
    pub(super) fn stop_vlans(&mut self) {
        for sw in std::mem::take(&mut self.switches) {
            let st = sw.stats();
            self.log.log(&format!(
                "kill vlan (in-process switch; ctl {})",
                sw.dir().display()
            ));
            self.log.info(&format!(
                "vlan {}: {} frames in, {} delivered, {} dropped, {} ports served",
                st.vlan,
                st.frames_in,
                st.frames_out,
                st.drops.total(),
                st.requests_accepted
            ));
            for ev in sw.shutdown(self.poll.registry()) {
                log_switch_event(&mut self.log, &ev);
            }
        }
    }

    /// The switch of vlan `nr`.
    pub(super) fn switch_mut(&mut self, nr: u32) -> Option<&mut Switch> {
        self.switches.iter_mut().find(|s| s.vlan() == nr)
    }
}

impl LoopMember for Switch {
    fn on_event(&mut self, cx: &mut Ctx<'_>, slot: usize, ev: &Event) {
        self.handle_event(cx.registry, slot, ev);
        for e in self.drain_events() {
            log_switch_event(cx.log, &e);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        Switch::next_deadline(self)
    }

    fn on_timer(&mut self, cx: &mut Ctx<'_>, now: Instant) {
        Switch::on_timer(self, cx.registry, now);
        for e in self.drain_events() {
            log_switch_event(cx.log, &e);
        }
    }
}

/// Switch events: port changes at debug level, refusals and errors as warnings.
fn log_switch_event(log: &mut Logger, ev: &SwitchEvent) {
    match ev {
        SwitchEvent::PortOpened { .. } | SwitchEvent::PortClosed { .. } => {
            log.debug(None, &ev.to_string())
        }
        SwitchEvent::Rejected { .. } | SwitchEvent::Error { .. } => {
            log.warning(None, &ev.to_string())
        }
    }
}
