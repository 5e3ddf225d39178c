//! Upstream's `qemu.forceAccel` (nixpkgs PR #509553): when a test demands an accelerator,
//! a machine that cannot have KVM fails at start with a message that says why, instead of
//! running 10-50 times slower under TCG. Pure text: what QEMU printed and what the host's
//! `/dev/kvm` looks like go in, the message comes out.

/// The check line of upstream's message.
const CHECK_KVM: &str =
    "Check that your user is in the 'kvm' group or that /dev/kvm has the correct permissions.";

/// Why QEMU could not use KVM, from its own output (`Could not access KVM kernel module:
/// Permission denied`, `failed to initialize kvm: No such file or directory`), lower-cased as
/// upstream prints it.
pub fn kvm_reason(output: &str) -> Option<String> {
    const MARKERS: [&str; 2] = [
        "Could not access KVM kernel module: ",
        "failed to initialize kvm: ",
    ];
    output.lines().find_map(|line| {
        MARKERS.iter().find_map(|m| {
            line.find(m)
                .map(|at| line[at + m.len()..].trim().to_lowercase())
                .filter(|r| !r.is_empty())
        })
    })
}

/// Upstream's message for a start that failed because QEMU could not open `/dev/kvm` (with
/// `accel=kvm` QEMU exits instead of falling back), if QEMU's output says so.
pub fn kvm_start_failure(output: &str) -> Option<String> {
    kvm_reason(output).map(|reason| {
        format!("forceAccel is enabled but /dev/kvm is not accessible ({reason}).\n{CHECK_KVM}")
    })
}

/// The message for a machine that QEMU runs under TCG although an accelerator was demanded:
/// upstream's words when `/dev/kvm` is not accessible to this process, else which machine
/// fell back and QEMU's own explanation if it gave one.
pub fn refused_tcg(machine: &str, qemu_output: &str) -> String {
    refused_tcg_with(machine, qemu_output, host_kvm_access())
}

fn refused_tcg_with(machine: &str, qemu_output: &str, access: Result<(), String>) -> String {
    match (kvm_reason(qemu_output), access) {
        (Some(reason), _) | (None, Err(reason)) => {
            format!("forceAccel is enabled but /dev/kvm is not accessible ({reason}).\n{CHECK_KVM}")
        }
        (None, Ok(())) => format!(
            "forceAccel is enabled but QEMU runs machine '{machine}' under TCG (software \
             emulation): its start command chose TCG, or KVM could not run it. Make the start \
             command use KVM (-machine accel=kvm), or drop forceAccel to accept a slow run."
        ),
    }
}

/// Whether this process may open `/dev/kvm` read-write (the lower-cased OS error if not).
fn host_kvm_access() -> Result<(), String> {
    use rustix::fs::{access, Access};
    access("/dev/kvm", Access::READ_OK | Access::WRITE_OK).map_err(|e| {
        std::io::Error::from(e)
            .to_string()
            .split(" (os error")
            .next()
            .unwrap_or_default()
            .to_lowercase()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_permission_error_becomes_upstreams_message() {
        let out = "qemu-system-x86_64: Could not access KVM kernel module: Permission denied\n\
                   qemu-system-x86_64: failed to initialize kvm: Permission denied\n";
        assert_eq!(
            kvm_start_failure(out).unwrap(),
            "forceAccel is enabled but /dev/kvm is not accessible (permission denied).\n\
             Check that your user is in the 'kvm' group or that /dev/kvm has the correct \
             permissions."
        );
        assert_eq!(
            kvm_reason("qemu: failed to initialize kvm: No such file or directory").as_deref(),
            Some("no such file or directory")
        );
    }

    #[test]
    fn output_without_a_kvm_error_is_no_kvm_failure() {
        assert_eq!(
            kvm_start_failure("qemu-system-x86_64: -m 9T: bad size"),
            None
        );
        assert_eq!(kvm_start_failure("failed to initialize kvm: "), None);
        assert_eq!(kvm_start_failure(""), None);
    }

    #[test]
    fn tcg_under_demand_names_the_cause() {
        let inaccessible = refused_tcg_with("m", "", Err("permission denied".into()));
        assert!(inaccessible.starts_with(
            "forceAccel is enabled but /dev/kvm is not accessible (permission denied).\n"
        ));
        let chosen = refused_tcg_with("m", "", Ok(()));
        assert!(
            chosen.contains("QEMU runs machine 'm' under TCG"),
            "{chosen}"
        );
        let qemu_said = refused_tcg_with(
            "m",
            "failed to initialize kvm: Operation not permitted",
            Ok(()),
        );
        assert!(
            qemu_said.contains("(operation not permitted)"),
            "{qemu_said}"
        );
    }
}
