//! The run's vlans: one in-process switch per configured vlan, started before any machine
//! (start scripts connect to it through `QEMU_VDE_SOCKET_<n>`), on the poll loop like every
//! other member, and stopped after the last machine is gone, with its counters logged.
//!
//! Network faults (`vlanN.impair`, `partition`, `heal`) are applied here: machines are the
//! switch's labels (a port is labelled with the machine whose QEMU opened it, found through
//! the peer's process group), every change is logged and becomes a span on the vlan's track
//! of the trace, and the counters are reported at cleanup.

use super::node::Kind;
use super::{Driver, DriverError};
use crate::log::Logger;
use crate::reactor::{Ctx, LoopMember, Owner};
use crate::rpc::{ErrorType, OpError};
use crate::vde::impair::{self, Impairment, Label, Rule, Scope};
use crate::vde::{Switch, SwitchConfig, SwitchEvent};
use mio::event::Event;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A network fault in force, shown as a span on the vlan's trace track once it ends.
pub(super) struct FaultSpan {
    vlan: u32,
    key: FaultKey,
    what: String,
    since: Instant,
}

/// Which fault of a vlan a span shows: a later fault with the same key replaces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultKey {
    /// The impairment of every delivery on the vlan.
    All,
    /// The impairment between two machines (smaller label first).
    Pair(Label, Label),
    /// The partition.
    Partition,
}

impl From<Scope> for FaultKey {
    fn from(scope: Scope) -> Self {
        match scope.normalised() {
            Scope::All => FaultKey::All,
            Scope::Between(a, b) => FaultKey::Pair(a, b),
        }
    }
}

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
        self.net_seed = self.opts.net_seed.unwrap_or_else(random_seed);
        self.log.begin(None, "start all VLans");
        self.log.info(&format!(
            "network faults use seed {} (replay with --net-seed {})",
            self.net_seed, self.net_seed
        ));
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
            let config = SwitchConfig {
                net_seed: self.net_seed,
                ..SwitchConfig::default()
            };
            let mut sw = match Switch::create(nr, &dir, owner, registry, config) {
                Ok(sw) => sw,
                Err(e) => {
                    self.log.end(false);
                    return Err(DriverError::Vlan { nr, source: e });
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
            if let Err(e) = self.link_vlan(i) {
                self.log.end(false);
                return Err(e);
            }
        }
        self.log.end(true);
        Ok(())
    }

    /// Stop every switch after the machines: log its counters, close its ports, remove its
    /// files.
    pub(super) fn stop_vlans(&mut self) {
        let now = Instant::now();
        for span in std::mem::take(&mut self.fault_spans) {
            self.trace_fault(span, now);
        }
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
            if !st.faults.is_zero() {
                self.log.info(&format!(
                    "vlan {} network faults: {}",
                    st.vlan,
                    st.faults.summary()
                ));
            }
            for ev in sw.shutdown(self.poll.registry()) {
                log_switch_event(&mut self.log, &ev);
            }
        }
    }

    /// The switch of vlan `nr`.
    pub(super) fn switch_mut(&mut self, nr: u32) -> Option<&mut Switch> {
        self.switches.iter_mut().find(|s| s.vlan() == nr)
    }

    /// What switch `i` reported: ports are labelled with their machine, the rest is logged.
    pub(super) fn switch_events(&mut self, i: usize) {
        let Some(sw) = self.switches.get_mut(i) else {
            return;
        };
        let events: Vec<SwitchEvent> = sw.drain_events().collect();
        for ev in events {
            if let SwitchEvent::PortOpened {
                endpoint,
                pid: Some(pid),
                ..
            } = ev
            {
                if let Some(label) = self.machine_of_pid(pid) {
                    if let Some(sw) = self.switches.get_mut(i) {
                        let _ = sw.label_endpoint(endpoint, label);
                    }
                }
            }
            log_switch_event(&mut self.log, &ev);
        }
    }

    /// The machine whose QEMU process group holds `pid` (its label is its index).
    fn machine_of_pid(&self, pid: u32) -> Option<Label> {
        let pid = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
        let group = rustix::process::getpgid(Some(pid)).ok()?;
        let group = group.as_raw_nonzero().get();
        let index = self
            .machines
            .iter()
            .position(|m| m.process_group() == Some(group))?;
        Label::try_from(index).ok()
    }

    fn machine_name(&self, label: Label) -> String {
        self.machines
            .get(label as usize)
            .map_or_else(|| format!("port {label}"), |m| m.name().to_owned())
    }

    /// A machine of the test by name, which must have a port on vlan `nr` now; with the
    /// containers that share its port (a container's port is the vlan's tap).
    fn port_on_vlan(
        &mut self,
        nr: u32,
        name: &str,
        arg: &str,
    ) -> Result<(Label, Vec<String>), OpError> {
        let value_error = |msg: String| OpError::new(ErrorType::Value, msg);
        let index = self
            .machines
            .iter()
            .position(|m| m.name() == name)
            .ok_or_else(|| value_error(format!("{arg}: no machine named '{name}'")))?;
        if self.machines[index].kind() == Kind::Nspawn {
            return self.container_on_vlan(nr, index, arg);
        }
        let label =
            Label::try_from(index).map_err(|_| value_error(format!("{arg}: too many machines")))?;
        let on_vlan = self
            .switches
            .iter()
            .find(|s| s.vlan() == nr)
            .is_some_and(|s| s.ports().iter().any(|p| p.label == Some(label)));
        if !on_vlan {
            return Err(value_error(format!(
                "{arg}: machine '{name}' has no port on vlan{nr} (is it started, and does \
                 its start script connect it to vlan {nr}?)"
            )));
        }
        Ok((label, vec![name.to_owned()]))
    }

    /// [`Driver::port_on_vlan`] for a fault that singles `name` out: it must not share its
    /// port with another container.
    fn label_on_vlan(&mut self, nr: u32, name: &str, arg: &str) -> Result<Label, OpError> {
        let (label, mates) = self.port_on_vlan(nr, name, arg)?;
        if mates.len() > 1 {
            return Err(shared_tap_error(nr, &mates, arg));
        }
        Ok(label)
    }

    fn vlan_exists(&self, nr: u32) -> Result<(), OpError> {
        if self.switches.iter().any(|s| s.vlan() == nr) {
            Ok(())
        } else {
            Err(OpError::new(ErrorType::Value, format!("no vlan {nr}")))
        }
    }

    /// `vlanN.impair(...)`: validate everything, then apply, log and trace.
    pub(super) fn op_impair(
        &mut self,
        nr: u32,
        impairment: Impairment,
        between: Option<&(String, String)>,
    ) -> Result<(), OpError> {
        self.vlan_exists(nr)?;
        let scope = match between {
            None => Scope::All,
            Some((a, b)) => Scope::between(
                self.label_on_vlan(nr, a, "between")?,
                self.label_on_vlan(nr, b, "between")?,
            ),
        };
        let rule = Rule { scope, impairment };
        let names = |l: Label| self.machine_name(l);
        let what = rule.describe(nr, &names);
        let key = FaultKey::from(rule.scope);
        let applied = self
            .switch_mut(nr)
            .map(|sw| sw.apply(rule))
            .unwrap_or(Ok(()));
        applied.map_err(|e| self.impair_error(&e))?;
        self.log.log(&what);
        self.fault_changed(nr, key, (!impairment.is_none()).then_some(what));
        Ok(())
    }

    /// `vlanN.start_capture(path)`, or stop it (`None`).
    pub(super) fn op_capture(&mut self, vlan: u32, path: Option<&Path>) -> Result<(), OpError> {
        let sw = self
            .switch_mut(vlan)
            .ok_or_else(|| OpError::new(ErrorType::Value, format!("no vlan {vlan}")))?;
        match path {
            Some(p) => sw
                .start_capture(p)
                .map_err(|e| OpError::new(ErrorType::Runtime, e.to_string()))?,
            None => sw.stop_capture(),
        }
        Ok(())
    }

    /// `vlanN.partition(groups…)`. Containers behind one tap must be in one group together.
    pub(super) fn op_partition(&mut self, nr: u32, groups: &[Vec<String>]) -> Result<(), OpError> {
        self.vlan_exists(nr)?;
        let mut labels = Vec::with_capacity(groups.len());
        for g in groups {
            let mut group: Vec<Label> = Vec::with_capacity(g.len());
            for name in g {
                let (label, mates) = self.port_on_vlan(nr, name, "partition")?;
                if !mates.iter().all(|m| g.contains(m)) {
                    return Err(shared_tap_error(nr, &mates, "partition"));
                }
                if !group.contains(&label) {
                    group.push(label);
                }
            }
            labels.push(group);
        }
        let applied = self
            .switch_mut(nr)
            .map(|sw| sw.partition(labels))
            .unwrap_or(Ok(()));
        applied.map_err(|e| self.impair_error(&e))?;
        let names = |l: Label| self.machine_name(l);
        let what = self
            .switches
            .iter()
            .find(|s| s.vlan() == nr)
            .and_then(|s| s.current_partition().map(|p| p.describe(nr, &names)))
            .unwrap_or_default();
        self.log.log(&what);
        self.fault_changed(nr, FaultKey::Partition, Some(what));
        Ok(())
    }

    /// `vlanN.heal()`: every impairment and partition of the vlan removed.
    pub(super) fn op_heal(&mut self, nr: u32) -> Result<(), OpError> {
        self.vlan_exists(nr)?;
        if let Some(sw) = self.switch_mut(nr) {
            sw.heal();
        }
        self.log.log(&format!("vlan{nr}: healed"));
        let now = Instant::now();
        let (ended, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.fault_spans)
            .into_iter()
            .partition(|s| s.vlan == nr);
        self.fault_spans = kept;
        for span in ended {
            self.trace_fault(span, now);
        }
        Ok(())
    }

    fn impair_error(&self, e: &impair::ImpairError) -> OpError {
        let names = |l: Label| self.machine_name(l);
        OpError::new(ErrorType::Value, e.describe(&names))
    }

    /// A fault of `key` on vlan `nr` was replaced by `what` (none: removed).
    fn fault_changed(&mut self, nr: u32, key: FaultKey, what: Option<String>) {
        let now = Instant::now();
        if let Some(at) = self
            .fault_spans
            .iter()
            .position(|s| s.vlan == nr && s.key == key)
        {
            let old = self.fault_spans.remove(at);
            self.trace_fault(old, now);
        }
        if let Some(what) = what {
            self.fault_spans.push(FaultSpan {
                vlan: nr,
                key,
                what,
                since: now,
            });
        }
    }

    fn trace_fault(&self, span: FaultSpan, end: Instant) {
        if let Some(t) = &self.trace {
            t.span(
                &format!("vlan{}", span.vlan),
                &span.what,
                span.since,
                end,
                Vec::new(),
            );
        }
    }
}

/// The network faults of one vlan at one moment (`snapshot_all`), to put back
/// (`restore_all`). Labels are machine indices, which a restored machine keeps.
#[derive(Debug, Clone)]
pub(super) struct VlanView {
    nr: u32,
    rules: Vec<Rule>,
    partition: Option<Vec<Vec<Label>>>,
}

impl Driver {
    /// Every vlan's faults now.
    pub(super) fn vlan_views(&self) -> Vec<VlanView> {
        self.switches
            .iter()
            .map(|s| VlanView {
                nr: s.vlan(),
                rules: s.rules(),
                partition: s.current_partition().map(|p| p.groups().to_vec()),
            })
            .collect()
    }

    /// Put the vlans' faults back as `views` recorded them (logged and traced like the
    /// test's own `impair`/`partition`/`heal`). Frames still delayed for a machine's old port
    /// go with that port; nothing of the old machines reaches the restored ones.
    pub(super) fn restore_vlan_views(&mut self, label: &str, views: &[VlanView]) {
        let now = Instant::now();
        for v in views {
            let Some(sw) = self.switch_mut(v.nr) else {
                continue;
            };
            sw.heal();
            let mut applied = Vec::new();
            for rule in &v.rules {
                if sw.apply(*rule).is_ok() {
                    applied.push(*rule);
                }
            }
            let partitioned = v
                .partition
                .as_ref()
                .is_some_and(|g| sw.partition(g.clone()).is_ok());
            let (ended, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.fault_spans)
                .into_iter()
                .partition(|s| s.vlan == v.nr);
            self.fault_spans = kept;
            for span in ended {
                self.trace_fault(span, now);
            }
            let names = |l: Label| self.machine_name(l);
            let mut spans = Vec::new();
            for rule in applied {
                spans.push((FaultKey::from(rule.scope), rule.describe(v.nr, &names)));
            }
            if partitioned {
                let what = self
                    .switches
                    .iter()
                    .find(|s| s.vlan() == v.nr)
                    .and_then(|s| s.current_partition().map(|p| p.describe(v.nr, &names)))
                    .unwrap_or_default();
                spans.push((FaultKey::Partition, what));
            }
            self.log
                .log(&format!("vlan{}: network faults as at {label}", v.nr));
            for (key, what) in spans {
                self.log.log(&what);
                self.fault_changed(v.nr, key, Some(what));
            }
        }
    }
}

/// A fault that would single out one of several containers behind vlan `nr`'s tap.
fn shared_tap_error(nr: u32, mates: &[String], arg: &str) -> OpError {
    OpError::new(
        ErrorType::Value,
        format!(
            "{arg}: containers {} reach vlan{nr}'s switch through one tap (they talk to each \
             other through the bridge, past the switch), so a network fault can only name \
             them together: put them in one partition group, or on different vlans",
            mates.join(", ")
        ),
    )
}

/// A seed for a run that did not pass `--net-seed`.
fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    u64::from_le_bytes(b)
}

impl LoopMember for Switch {
    /// The driver drains the switch's events after each call (`Driver::switch_events`):
    /// labelling a new port needs the machines.
    fn on_event(&mut self, cx: &mut Ctx<'_>, slot: usize, ev: &Event) {
        self.handle_event(cx.registry, slot, ev);
    }

    fn next_deadline(&self) -> Option<Instant> {
        Switch::next_deadline(self)
    }

    fn on_timer(&mut self, cx: &mut Ctx<'_>, now: Instant) {
        Switch::on_timer(self, cx.registry, now);
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
