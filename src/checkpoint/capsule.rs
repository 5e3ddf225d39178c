//! The description of a failure capsule (`--keep-failed DIR`): what failed and when, the
//! vlans, and every machine of the test with its start command and whether it was saved.
//! `ntd resume DIR` builds its run from it. Text like the checkpoint manifest (one
//! `field value…` per line, percent-encoded values, a CRC-32 last line); pure.
//!
//! The capsule directory holds this file (`capsule`), `machines/<name>/` (one checkpoint
//! entry per saved machine, its stream compressed), `driver.log`, the test script, and the
//! trace (`trace.json`, `trace.html`).

use super::manifest::{dec, enc};
use std::fmt::Write as _;

const MAGIC: &str = "ntd-capsule";
const VERSION: u32 = 1;
/// The description's file name in the capsule directory.
pub const FILE: &str = "capsule";
/// Where the saved machines' entries are.
pub const MACHINES: &str = "machines";
pub const LOG: &str = "driver.log";

/// One machine of the failed test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapsuleMachine {
    pub name: String,
    pub start_command: String,
    /// `Ok`: its entry is `machines/<name>`; `Err`: why it was not saved.
    pub saved: Result<(), String>,
    /// Its QEMU had ntd's vmgenid device (the restored one must have it too).
    pub vmgenid: bool,
    pub allow_reboot: bool,
}

/// See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capsule {
    /// Why the test failed, in a line.
    pub reason: String,
    /// When (ms since the epoch).
    pub failed_at_ms: u64,
    /// The test script's file name inside the capsule (empty: none).
    pub script: String,
    pub vlans: Vec<u32>,
    pub machines: Vec<CapsuleMachine>,
}

impl Capsule {
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{MAGIC} {VERSION}");
        let _ = writeln!(s, "reason {}", enc(&self.reason));
        let _ = writeln!(s, "failed-at-ms {}", self.failed_at_ms);
        let _ = writeln!(s, "script {}", enc(&self.script));
        for v in &self.vlans {
            let _ = writeln!(s, "vlan {v}");
        }
        for m in &self.machines {
            let saved = match &m.saved {
                Ok(()) => "saved".to_owned(),
                Err(why) => format!("unsaved {}", enc(why)),
            };
            let _ = writeln!(
                s,
                "machine {} {} {} {} {}",
                enc(&m.name),
                enc(&m.start_command),
                u8::from(m.vmgenid),
                u8::from(m.allow_reboot),
                saved
            );
        }
        let crc = crc32fast::hash(s.as_bytes());
        let _ = writeln!(s, "crc {crc:08x}");
        s
    }

    /// Parse and check a description; the error says what is wrong with it.
    pub fn decode(text: &str) -> Result<Capsule, String> {
        let body_end = text
            .trim_end_matches('\n')
            .rfind('\n')
            .map(|i| i + 1)
            .ok_or("the capsule description is truncated")?;
        let (body, last) = text.split_at(body_end);
        let want = last
            .trim_end()
            .strip_prefix("crc ")
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or("the capsule description has no checksum line (truncated?)")?;
        if crc32fast::hash(body.as_bytes()) != want {
            return Err("the capsule description's checksum does not match (corrupt)".into());
        }
        let mut lines = body.lines();
        if lines.next() != Some(&format!("{MAGIC} {VERSION}")) {
            return Err("not a capsule of this ntd version".into());
        }
        let mut c = Capsule {
            reason: String::new(),
            failed_at_ms: 0,
            script: String::new(),
            vlans: Vec::new(),
            machines: Vec::new(),
        };
        for line in lines {
            let f: Vec<&str> = line.split(' ').collect();
            let bad = || format!("bad capsule line {line:?}");
            let text = |i: usize| f.get(i).and_then(|v| dec(v)).ok_or_else(bad);
            let flag = |i: usize| match f.get(i) {
                Some(&"0") => Ok(false),
                Some(&"1") => Ok(true),
                _ => Err(bad()),
            };
            match (f[0], f.len()) {
                ("reason", 2) => c.reason = text(1)?,
                ("failed-at-ms", 2) => c.failed_at_ms = f[1].parse().map_err(|_| bad())?,
                ("script", 2) => c.script = text(1)?,
                ("vlan", 2) => c.vlans.push(f[1].parse().map_err(|_| bad())?),
                ("machine", 6 | 7) => c.machines.push(CapsuleMachine {
                    name: text(1)?,
                    start_command: text(2)?,
                    vmgenid: flag(3)?,
                    allow_reboot: flag(4)?,
                    saved: match (f[5], f.len()) {
                        ("saved", 6) => Ok(()),
                        ("unsaved", 7) => Err(text(6)?),
                        _ => return Err(bad()),
                    },
                }),
                _ => return Err(bad()),
            }
        }
        let names_ok = c.machines.iter().all(|m| {
            !m.name.is_empty() && !m.name.contains('/') && m.name != "." && m.name != ".."
        }) && !c.script.contains('/');
        if !names_ok {
            return Err("the capsule names a file outside its directory".into());
        }
        if c.machines.is_empty() {
            return Err("the capsule lists no machine".into());
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Capsule {
        Capsule {
            reason: "the test script failed (exit status 1): AssertionError: 2 != 3".into(),
            failed_at_ms: 1_796_593_454_123,
            script: "test.py".into(),
            vlans: vec![1, 2],
            machines: vec![
                CapsuleMachine {
                    name: "server".into(),
                    start_command: "/nix/store/x-run-server-vm --flag".into(),
                    saved: Ok(()),
                    vmgenid: true,
                    allow_reboot: false,
                },
                CapsuleMachine {
                    name: "client".into(),
                    start_command: "/nix/store/y-run-client-vm".into(),
                    saved: Err("its shell was running a command".into()),
                    vmgenid: true,
                    allow_reboot: true,
                },
            ],
        }
    }

    #[test]
    fn encode_then_decode_is_identity() {
        let c = sample();
        assert_eq!(Capsule::decode(&c.encode()), Ok(c));
    }

    #[test]
    fn a_changed_or_truncated_description_is_rejected() {
        let text = sample().encode();
        for n in 0..text.len() - 1 {
            assert!(Capsule::decode(&text[..n]).is_err(), "cut at {n} accepted");
        }
        let flipped = text.replacen("server", "servex", 1);
        assert!(Capsule::decode(&flipped).unwrap_err().contains("checksum"));
    }

    #[test]
    fn names_leaving_the_directory_are_rejected() {
        let mut c = sample();
        c.machines[0].name = "../etc".into();
        assert!(Capsule::decode(&c.encode())
            .unwrap_err()
            .contains("outside"));
        let mut c = sample();
        c.script = "../x.py".into();
        assert!(Capsule::decode(&c.encode()).is_err());
    }
}
