//! What a run with systemd-nspawn containers adds to the driver: the host preparation before
//! anything starts (upstream's checks and repairs, ntd's private network and mount
//! namespaces), a tap `vde-tap<V>` on a bridge `br<V>` per vlan, served by the vlan's switch,
//! the containers themselves, and which container a network fault names on a vlan.
//!
//! Isolation: unless `NTD_CONTAINER_NETNS=host`, ntd moves itself into a private network and
//! mount namespace before the first switch starts (see [`crate::container::hostenv`]): every
//! bridge, tap, veth and named netns of the run vanishes with the run, whatever ends it, and
//! two runs on one host never share a `br1`. The price: the test script (the shim runs in
//! those namespaces too) and the containers reach nothing of the host's network, which a
//! test in a Nix build sandbox cannot either.
//!
//! Faults: a VM's port on the switch is its own, a container's traffic reaches the switch
//! through the vlan's one tap. A fault naming a container labels that tap with the container;
//! containers that share a vlan share the tap (and talk to each other through the bridge,
//! past the switch), so a fault can only name them together.

use super::node::{Kind, Node};
use super::{Driver, DriverError};
use crate::container::{hostenv, Container, Tools};
use crate::machine::MachineError;
use crate::netlink::Netlink;
use crate::rpc::{ErrorType, OpError};
use crate::vde::impair::Label;
use crate::vde::tap::{LinkError, VlanLink};
use std::path::{Path, PathBuf};

/// `NTD_CONTAINER_NETNS=host`: containers' bridges and taps in the host's network namespace
/// (to reach them from the host in an interactive run); anything else isolates the run.
pub const NETNS_ENV: &str = "NTD_CONTAINER_NETNS";

impl Driver {
    /// Upstream's host preparation (root, `/run`, `/var/run`, cgroups, `/etc/os-release`, a
    /// machine id) and ntd's isolation; before any switch or process starts.
    pub(super) fn prepare_container_host(&mut self) -> Result<(), DriverError> {
        hostenv::check_root().map_err(DriverError::ContainerHost)?;
        let shared = std::env::var(NETNS_ENV).is_ok_and(|v| v == "host");
        if !shared {
            hostenv::private_mounts().map_err(DriverError::ContainerHost)?;
        }
        let mut notes = Vec::new();
        hostenv::prepare(&mut notes).map_err(DriverError::ContainerHost)?;
        for n in notes {
            self.log.info(&format!("container host: {n}"));
        }
        if shared {
            self.log.info(&format!(
                "{NETNS_ENV}=host: the containers' bridges and taps are made in the host's \
                 network namespace"
            ));
        } else {
            hostenv::private_network().map_err(DriverError::ContainerHost)?;
            self.log.debug(
                None,
                "containers: the run has a network and mount namespace of its own",
            );
        }
        let nl = Netlink::open()
            .map_err(|e| DriverError::Setup("cannot open netlink", std::io::Error::other(e)))?;
        self.netlink = Some(nl);
        Ok(())
    }

    /// Switch `i` gets its vlan's bridge and tap (in a run with containers).
    pub(super) fn link_vlan(&mut self, i: usize) -> Result<(), DriverError> {
        let Some(nl) = self.netlink.as_mut() else {
            return Ok(());
        };
        let Some(sw) = self.switches.get_mut(i) else {
            return Ok(());
        };
        let nr = sw.vlan();
        let link = match VlanLink::create(sw, self.poll.registry(), nl) {
            Ok(link) => link,
            // Without /dev/net/tun (a Nix sandbox that does not offer it) containers still
            // reach each other through the bridge their start scripts make; upstream's
            // vde_plug2tap fails silently there. Say what is lost.
            Err(LinkError::Tap { name, source }) => {
                self.log.warning(
                    None,
                    &format!(
                        "vlan {nr}: cannot create tap {name} ({source}): containers on vlan \
                         {nr} reach each other but not its VMs (in a Nix build, offer \
                         /dev/net/tun to the sandbox: extra-sandbox-paths)"
                    ),
                );
                return Ok(());
            }
            Err(source) => return Err(DriverError::Tap { nr, source }),
        };
        self.log.log(&format!(
            "vlan {nr}: tap vde-tap{nr} on bridge {} for the containers",
            link.bridge_name()
        ));
        while self.links.len() <= i {
            self.links.push(None);
        }
        self.links[i] = Some(link);
        Ok(())
    }

    /// Delete the vlans' bridges (after the containers are gone; the taps close with the
    /// switches).
    pub(super) fn unlink_vlans(&mut self) {
        let Some(nl) = self.netlink.as_mut() else {
            return;
        };
        for link in std::mem::take(&mut self.links).into_iter().flatten() {
            let name = link.bridge_name().to_owned();
            if let Err(e) = link.remove(nl) {
                self.log
                    .warning(None, &format!("cannot remove bridge {name}: {e}"));
            }
        }
    }

    /// A configured container, its old state removed unless kept.
    pub(super) fn add_container(
        &mut self,
        name: &str,
        start_script: &str,
        keep: bool,
    ) -> Result<usize, MachineError> {
        let index = self.machines.len();
        let sock = PathBuf::from(format!("{name}-nspawn.sock"));
        let socket_base = self
            .sockets
            .base_for(&sock, crate::container::MAX_SOCKET_PATH, &mut self.log)
            .map_err(|source| MachineError::SocketDir {
                name: name.to_owned(),
                source,
            })?;
        let mut c = Container::new(
            name,
            index,
            &self.tmp_dir,
            &socket_base,
            start_script,
            Tools::from_env(),
        );
        c.keep_state = keep;
        c.reset_state_dir(&mut self.log)
            .map_err(MachineError::Container)?;
        self.machines.push(Node::Container(c));
        Ok(index)
    }

    /// The label a fault on vlan `nr` uses for container `index`: the vlan's tap, labelled
    /// with it. `Err` if the container has no interface on the vlan. The second value lists
    /// every container behind that tap (the named one included).
    pub(super) fn container_on_vlan(
        &mut self,
        nr: u32,
        index: usize,
        arg: &str,
    ) -> Result<(Label, Vec<String>), OpError> {
        let name = self.machines[index].name().to_owned();
        let value_error = |msg: String| OpError::new(ErrorType::Value, msg);
        let ports = bridge_ports(&Path::new("/sys/class/net").join(format!("br{nr}")));
        let names: Vec<&str> = self
            .machines
            .iter()
            .filter(|m| m.kind() == Kind::Nspawn)
            .map(Node::name)
            .collect();
        let mut mates: Vec<String> = ports
            .iter()
            .filter_map(|p| owner_of_port(p, &names))
            .map(str::to_owned)
            .collect();
        mates.sort();
        mates.dedup();
        if !mates.contains(&name) {
            return Err(value_error(format!(
                "{arg}: container '{name}' has no interface on vlan{nr} (is it started, and \
                 does its start script put it on vlan {nr}?)"
            )));
        }
        let label =
            Label::try_from(index).map_err(|_| value_error(format!("{arg}: too many machines")))?;
        let i = self
            .switches
            .iter()
            .position(|s| s.vlan() == nr)
            .ok_or_else(|| value_error(format!("no vlan {nr}")))?;
        let endpoint = self
            .links
            .get(i)
            .and_then(Option::as_ref)
            .map(VlanLink::endpoint)
            .ok_or_else(|| value_error(format!("vlan{nr} has no tap for containers")))?;
        let _ = self.switches[i].label_endpoint(endpoint, label);
        Ok((label, mates))
    }
}

/// The names of the ports of the bridge at `bridge` (a `/sys/class/net/br<V>` directory).
fn bridge_ports(bridge: &Path) -> Vec<String> {
    std::fs::read_dir(bridge.join("brif"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The machine a bridge port belongs to: upstream's run-nspawn names a container's host-side
/// veth `<container>-<interface>`; the longest matching name wins (`a-b-eth1` is `a-b`'s).
pub fn owner_of_port<'a>(port: &str, names: &[&'a str]) -> Option<&'a str> {
    names
        .iter()
        .copied()
        .filter(|n| {
            port.strip_prefix(n)
                .is_some_and(|rest| rest.len() > 1 && rest.starts_with('-'))
        })
        .max_by_key(|n| n.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_belongs_to_the_longest_container_name_it_starts_with() {
        let names = ["a", "a-b", "vm", "web"];
        assert_eq!(owner_of_port("a-eth1", &names), Some("a"));
        assert_eq!(owner_of_port("a-b-eth1", &names), Some("a-b"));
        assert_eq!(owner_of_port("web-eth2", &names), Some("web"));
        assert_eq!(owner_of_port("vde-tap1", &names), None);
        assert_eq!(owner_of_port("web-", &names), None);
        assert_eq!(owner_of_port("webx-eth1", &names), None);
    }
}
