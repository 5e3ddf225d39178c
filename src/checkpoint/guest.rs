//! What a save and a restore send to the guest shell, and how the answers are read. Pure text.
//!
//! - Before a save: [`LIST_9P`] lists the 9p mounts (bash builtins only) and the guest clock;
//!   [`classify_mounts`] decides: the shares ntd manages (`xchg`, `shared`) are unmounted
//!   ([`umount_command`]) and mounted again afterwards ([`mount_command`]); a 9p Nix store,
//!   or any other 9p mount, makes the checkpoint impossible (QEMU refuses to migrate while a
//!   9p export is mounted).
//! - After a restore: [`fixup_command`] sets the guest clock from the host's (the guest's own
//!   clock plus a correction computed on the host, so the command's travel time does not
//!   count), writes fresh host random bytes into the kernel's pool, checks that the guest's
//!   vmgenid driver is bound (it reseeds the CRNG when QEMU's VM generation id changes, which
//!   it does for every restore) and mounts the shares again; [`NOW_COMMAND`] then reads the
//!   guest clock and [`clock_step_command`] corrects it when the first setting missed.

use super::manifest::Mount9p;
use crate::machine::words::shell_quote;
use std::fmt::Write as _;

/// 9p tags of the shares ntd (and qemu-vm.nix) manage.
pub const MANAGED_TAGS: &[&str] = &["shared", "xchg"];
/// Marker lines in the guest's answers.
const MOUNT_LINE: &str = "ntd-9p ";
const NOW_LINE: &str = "ntd-now ";
const CLOCK_FAILED: &str = "ntd-clock-failed";
const WHOLE_SECONDS: &str = "ntd-clock-whole-seconds";
const NO_VMGENID: &str = "ntd-no-vmgenid";
const MOUNT_FAILED: &str = "ntd-mount-failed ";

/// Lists the 9p mounts (`ntd-9p <tag> <dir> <options>`, as `/proc/mounts` escapes them), then
/// the guest clock in microseconds.
pub const LIST_9P: &str = "while read -r d m t o r; do [[ $t == 9p ]] && printf 'ntd-9p %s %s %s\\n' \"$d\" \"$m\" \"$o\"; done </proc/mounts; printf 'ntd-now %s\\n' \"${EPOCHREALTIME/./}\"";

/// `/proc/mounts` octal escapes (`\040` for a space …) decoded.
fn unescape_mounts_field(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|o| o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(o)) => {
                out.push((o[0] - b'0') << 6 | (o[1] - b'0') << 3 | (o[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The guest's answer to [`LIST_9P`]: its 9p mounts and its clock (µs since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountList {
    pub mounts: Vec<Mount9p>,
    pub now_us: Option<i64>,
}

pub fn parse_mount_list(output: &[u8]) -> MountList {
    let text = String::from_utf8_lossy(output);
    let mut list = MountList {
        mounts: Vec::new(),
        now_us: None,
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(MOUNT_LINE) {
            let f: Vec<&str> = rest.split(' ').collect();
            if let [tag, dir, options] = f[..] {
                list.mounts.push(Mount9p {
                    tag: unescape_mounts_field(tag),
                    dir: unescape_mounts_field(dir),
                    options: unescape_mounts_field(options),
                });
            }
        } else if let Some(n) = line.strip_prefix(NOW_LINE) {
            list.now_us = n.trim().parse().ok();
        }
    }
    list
}

/// Whether a machine with these 9p mounts can be saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountVerdict {
    /// Unmount these (ntd's shares) for the save, mount them again after.
    Unmount(Vec<Mount9p>),
    /// Cannot be saved: why (shown once, as a warning).
    Impossible(String),
}

pub fn classify_mounts(mounts: &[Mount9p]) -> MountVerdict {
    if let Some(store) = mounts
        .iter()
        .find(|m| m.tag == "nix-store" || m.dir == "/nix/store" || m.dir.starts_with("/nix/"))
    {
        return MountVerdict::Impossible(format!(
            "the guest mounts its Nix store over 9p (tag '{}' on {}), and QEMU cannot save a \
             machine while a 9p share is mounted; set virtualisation.useNixStoreImage = true \
             (a store image on a disk) in the node's configuration to make checkpoints possible",
            store.tag, store.dir
        ));
    }
    if let Some(other) = mounts
        .iter()
        .find(|m| !MANAGED_TAGS.contains(&m.tag.as_str()))
    {
        return MountVerdict::Impossible(format!(
            "the guest has the 9p share '{}' mounted on {}, which ntd does not manage, and \
             QEMU cannot save a machine while a 9p share is mounted",
            other.tag, other.dir
        ));
    }
    MountVerdict::Unmount(mounts.to_vec())
}

/// Unmount the shares (innermost first, in case one is below another).
pub fn umount_command(mounts: &[Mount9p]) -> String {
    let mut dirs: Vec<&str> = mounts.iter().map(|m| m.dir.as_str()).collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.len()));
    let mut s = String::from("umount --");
    for d in dirs {
        s.push(' ');
        shell_quote(d, &mut s);
    }
    s
}

/// Mount the shares again with their old options (falling back on qemu-vm.nix's); a share
/// that cannot be mounted is reported (`ntd-mount-failed <tag>`), the others still mount.
pub fn mount_command(mounts: &[Mount9p]) -> String {
    let mut s = String::new();
    for m in mounts {
        let (mut tag, mut dir, mut opts) = (String::new(), String::new(), String::new());
        shell_quote(&m.tag, &mut tag);
        shell_quote(&m.dir, &mut dir);
        shell_quote(&m.options, &mut opts);
        let _ = write!(
            s,
            "{{ mount -t 9p -o {opts} {tag} {dir} 2>/dev/null || mount -t 9p -o trans=virtio,version=9p2000.L {tag} {dir} || echo {MOUNT_FAILED}{tag}; }}; "
        );
    }
    s
}

/// Set the clock to the guest's own clock plus `correction_us`, computed in the guest just
/// before `date` runs (GNU date takes fractions; busybox date whole seconds).
fn clock_text(correction_us: i64, s: &mut String) {
    let _ = write!(
        s,
        "t=${{EPOCHREALTIME/./}}; t=$(( t + ({correction_us}) )); \
         date -s \"@${{t:0:-6}}.${{t: -6}}\" >/dev/null 2>&1 || \
         {{ date -s \"@$(( (t + 500000) / 1000000 ))\" >/dev/null 2>&1 && echo {WHOLE_SECONDS}; }} || \
         echo {CLOCK_FAILED}; "
    );
}

/// Report the guest clock (builtins only: the round trip is short, so its midpoint is a
/// good host-side reference).
pub const NOW_COMMAND: &str = "printf 'ntd-now %s\\n' \"${EPOCHREALTIME/./}\"";

/// Everything a restored guest needs before the test sees it (see the module documentation).
pub fn fixup_command(correction_us: i64, random: &[u8], mounts: &[Mount9p]) -> String {
    let mut s = String::new();
    clock_text(correction_us, &mut s);
    s.push_str("printf '");
    for b in random {
        let _ = write!(s, "\\x{b:02x}");
    }
    s.push_str("' >/dev/urandom; ");
    let _ = write!(
        s,
        "[[ -e /sys/bus/acpi/drivers/vmgenid/QEMUVGID:00 ]] || echo {NO_VMGENID}; "
    );
    s.push_str(&mount_command(mounts));
    s.push(':');
    s
}

/// Correct the clock once more.
pub fn clock_step_command(correction_us: i64) -> String {
    let mut s = String::new();
    clock_text(correction_us, &mut s);
    s.push(':');
    s
}

/// What a [`fixup_command`] or [`clock_step_command`] reported.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FixupReport {
    /// The guest clock at the end, µs since the epoch.
    pub now_us: Option<i64>,
    pub clock_failed: bool,
    /// Only whole seconds could be set (busybox `date`): no point in correcting further.
    pub whole_seconds: bool,
    pub no_vmgenid: bool,
    pub mount_failed: Vec<String>,
}

pub fn parse_fixup(output: &[u8]) -> FixupReport {
    let text = String::from_utf8_lossy(output);
    let mut r = FixupReport::default();
    for line in text.lines() {
        if let Some(n) = line.strip_prefix(NOW_LINE) {
            r.now_us = n.trim().parse().ok();
        } else if line == CLOCK_FAILED {
            r.clock_failed = true;
        } else if line == WHOLE_SECONDS {
            r.whole_seconds = true;
        } else if line == NO_VMGENID {
            r.no_vmgenid = true;
        } else if let Some(tag) = line.strip_prefix(MOUNT_FAILED) {
            r.mount_failed.push(tag.to_owned());
        }
    }
    r
}

/// Clock errors up to this are left alone: a correction costs a `date` exec, 0.1–0.4 s in a
/// restored guest under TCG (QEMU's translation cache starts empty), and the promise is a
/// clock within a second of the host's.
pub const CLOCK_TOLERANCE_US: i64 = 200_000;
/// At most this many extra clock corrections after the fixup.
pub const CLOCK_STEPS: u32 = 2;

/// The correction to apply so that the guest clock reads the host's: the guest was `error_us`
/// ahead of the host (negative: behind) when it last reported. `None`: close enough.
pub fn clock_correction(error_us: i64) -> Option<i64> {
    (error_us.abs() > CLOCK_TOLERANCE_US).then_some(-error_us)
}

#[cfg(test)]
#[path = "guest_tests.rs"]
mod tests;
