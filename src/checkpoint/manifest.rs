//! The manifest of one machine's checkpoint: what the entry holds (each file with its length
//! and CRC-32), what ntd needs to resume the machine (its shell session, the 9p shares to
//! mount again, where its disk overlays go, the clock offset at the save) and, as its last
//! line, the CRC-32 of everything before it. Text, one `field value…` per line, values
//! percent-encoded where they could hold spaces. Pure: [`Manifest::encode`] and
//! [`Manifest::decode`] are exact inverses, and decoding rejects anything it does not know.

use super::codec::Codec;
use std::fmt::Write as _;

/// One file of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    /// File name inside the entry directory (no `/`).
    pub name: String,
    pub len: u64,
    pub crc: u32,
}

/// A disk overlay: entry file name and the path QEMU had it at, relative to the state dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskRecord {
    pub file: String,
    pub rel_path: String,
}

/// A 9p share the guest had mounted (unmounted for the save, mounted again after).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount9p {
    pub tag: String,
    pub dir: String,
    pub options: String,
}

/// The host-side state of the guest shell at the save (see
/// `machine::session::SavedSession`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionRecord {
    pub spool_used: u64,
    pub spool: bool,
    pub timeouts: bool,
    pub waits: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub key: String,
    /// The save this entry belongs to (machines on shared vlans restore from one cut only).
    pub cut: String,
    pub name: String,
    /// Milliseconds since the epoch (host clock) when the machine was stopped.
    pub saved_at_ms: u64,
    /// QEMU's version as `query-version` reported it (`major.minor.micro`).
    pub qemu_version: String,
    /// Guest clock minus host clock in microseconds, measured just before the save.
    pub clock_offset_us: i64,
    pub session: SessionRecord,
    pub disks: Vec<DiskRecord>,
    pub mounts: Vec<Mount9p>,
    pub files: Vec<FileRecord>,
    /// How the migration stream is stored (a `codec` line unless raw).
    pub codec: Codec,
    /// Read-only disk images (not copied: they must be the same at the restore).
    pub read_only: Vec<ReadOnlyImage>,
}

/// A read-only disk image the saved machine had open (a Nix store image, say), identified
/// by its length and a CRC-32 of its first and last MiB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOnlyImage {
    /// Relative to the machine's state directory (made by its start script), or absolute.
    pub path: String,
    pub in_state_dir: bool,
    pub len: u64,
    pub sample_crc: u32,
}

const MAGIC: &str = "ntd-checkpoint";

/// Percent-encode everything but `[A-Za-z0-9._/,=:+@-]` (so spaces and newlines cannot split
/// a field).
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"._/,=:+@-".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    if out.is_empty() {
        out.push('%'); // the empty value
    }
    out
}

pub fn dec(s: &str) -> Option<String> {
    if s == "%" {
        return Some(String::new());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn flag(b: bool) -> u8 {
    u8::from(b)
}

fn parse_flag(s: &str) -> Option<bool> {
    match s {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

impl Manifest {
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{MAGIC} {}", super::FORMAT_VERSION);
        let _ = writeln!(s, "key {}", enc(&self.key));
        let _ = writeln!(s, "cut {}", enc(&self.cut));
        let _ = writeln!(s, "name {}", enc(&self.name));
        let _ = writeln!(s, "saved-at-ms {}", self.saved_at_ms);
        let _ = writeln!(s, "qemu-version {}", enc(&self.qemu_version));
        let _ = writeln!(s, "clock-offset-us {}", self.clock_offset_us);
        let r = &self.session;
        let _ = writeln!(
            s,
            "session {} {} {} {}",
            r.spool_used,
            flag(r.spool),
            flag(r.timeouts),
            flag(r.waits)
        );
        for d in &self.disks {
            let _ = writeln!(s, "disk {} {}", enc(&d.file), enc(&d.rel_path));
        }
        for m in &self.mounts {
            let _ = writeln!(
                s,
                "mount9p {} {} {}",
                enc(&m.tag),
                enc(&m.dir),
                enc(&m.options)
            );
        }
        for f in &self.files {
            let _ = writeln!(s, "file {} {} {:08x}", enc(&f.name), f.len, f.crc);
        }
        for r in &self.read_only {
            let _ = writeln!(
                s,
                "rodisk {} {} {} {:08x}",
                flag(r.in_state_dir),
                enc(&r.path),
                r.len,
                r.sample_crc
            );
        }
        if self.codec != Codec::Raw {
            let _ = writeln!(s, "codec {}", self.codec.name());
        }
        let crc = crc32fast::hash(s.as_bytes());
        let _ = writeln!(s, "crc {crc:08x}");
        s
    }

    /// Parse and check a manifest; the error says what is wrong with it.
    pub fn decode(text: &str) -> Result<Manifest, String> {
        let body_end = text
            .trim_end_matches('\n')
            .rfind('\n')
            .map(|i| i + 1)
            .ok_or("the manifest is truncated")?;
        let (body, last) = text.split_at(body_end);
        let want = last
            .trim_end()
            .strip_prefix("crc ")
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or("the manifest has no checksum line (truncated?)")?;
        if crc32fast::hash(body.as_bytes()) != want {
            return Err("the manifest's checksum does not match (corrupt)".into());
        }
        let mut lines = body.lines();
        let head = lines.next().unwrap_or_default();
        if head != format!("{MAGIC} {}", super::FORMAT_VERSION) {
            return Err(format!("unknown manifest format {head:?}"));
        }
        let mut m = Manifest {
            key: String::new(),
            cut: String::new(),
            name: String::new(),
            saved_at_ms: 0,
            qemu_version: String::new(),
            clock_offset_us: 0,
            session: SessionRecord::default(),
            disks: Vec::new(),
            mounts: Vec::new(),
            files: Vec::new(),
            codec: Codec::Raw,
            read_only: Vec::new(),
        };
        for line in lines {
            let f: Vec<&str> = line.split(' ').collect();
            let bad = || format!("bad manifest line {line:?}");
            let text = |i: usize| f.get(i).and_then(|v| dec(v)).ok_or_else(bad);
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).ok_or_else(bad);
            match (f[0], f.len()) {
                ("key", 2) => m.key = text(1)?,
                ("cut", 2) => m.cut = text(1)?,
                ("name", 2) => m.name = text(1)?,
                ("saved-at-ms", 2) => m.saved_at_ms = num(1)?,
                ("qemu-version", 2) => m.qemu_version = text(1)?,
                ("clock-offset-us", 2) => {
                    m.clock_offset_us = f[1].parse().map_err(|_| bad())?;
                }
                ("session", 5) => {
                    let fl = |i: usize| parse_flag(f[i]).ok_or_else(bad);
                    m.session = SessionRecord {
                        spool_used: num(1)?,
                        spool: fl(2)?,
                        timeouts: fl(3)?,
                        waits: fl(4)?,
                    };
                }
                ("disk", 3) => m.disks.push(DiskRecord {
                    file: text(1)?,
                    rel_path: text(2)?,
                }),
                ("mount9p", 4) => m.mounts.push(Mount9p {
                    tag: text(1)?,
                    dir: text(2)?,
                    options: text(3)?,
                }),
                ("file", 4) => m.files.push(FileRecord {
                    name: text(1)?,
                    len: num(2)?,
                    crc: u32::from_str_radix(f[3], 16).map_err(|_| bad())?,
                }),
                ("codec", 2) => m.codec = Codec::parse(f[1]).ok_or_else(bad)?,
                ("rodisk", 5) => m.read_only.push(ReadOnlyImage {
                    in_state_dir: parse_flag(f[1]).ok_or_else(bad)?,
                    path: text(2)?,
                    len: num(3)?,
                    sample_crc: u32::from_str_radix(f[4], 16).map_err(|_| bad())?,
                }),
                _ => return Err(bad()),
            }
        }
        let names_ok = m
            .files
            .iter()
            .map(|f| f.name.as_str())
            .chain(m.disks.iter().map(|d| d.file.as_str()))
            .all(|n| !n.is_empty() && !n.contains('/') && n != "." && n != "..");
        let rel_ok = m
            .disks
            .iter()
            .map(|d| d.rel_path.as_str())
            .chain(
                m.read_only
                    .iter()
                    .filter(|r| r.in_state_dir)
                    .map(|r| r.path.as_str()),
            )
            .all(|p| !p.starts_with('/') && !p.split('/').any(|c| c == ".."));
        if !names_ok || !rel_ok {
            return Err("the manifest names a file outside its entry".into());
        }
        if m.key.is_empty() || m.cut.is_empty() || !m.files.iter().any(|f| f.name == super::RAM) {
            return Err("the manifest lacks its key, cut or migration stream".into());
        }
        Ok(m)
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    pub(crate) fn sample_manifest() -> Manifest {
        Manifest {
            key: "0123456789abcdef0123456789abcdef".into(),
            cut: "c0ffee".into(),
            name: "web server".into(),
            saved_at_ms: 1_796_593_454_123,
            qemu_version: "7.2.22".into(),
            clock_offset_us: -1234,
            session: SessionRecord {
                spool_used: 83,
                spool: true,
                timeouts: false,
                waits: true,
            },
            disks: vec![DiskRecord {
                file: "disk0".into(),
                rel_path: "web server.qcow2".into(),
            }],
            mounts: vec![Mount9p {
                tag: "shared".into(),
                dir: "/tmp/sh ared".into(),
                options: "rw,trans=virtio,msize=16384".into(),
            }],
            files: vec![
                FileRecord {
                    name: "ram".into(),
                    len: 127_315_342,
                    crc: 0xdead_beef,
                },
                FileRecord {
                    name: "disk0".into(),
                    len: 2_490_368,
                    crc: 1,
                },
            ],
            codec: Codec::Raw,
            read_only: vec![ReadOnlyImage {
                path: "/nix/store/x-nix-store-image/store.img".into(),
                in_state_dir: false,
                len: 1 << 30,
                sample_crc: 7,
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::sample_manifest as sample;
    use super::*;

    #[test]
    fn encode_then_decode_is_identity() {
        let m = sample();
        let text = m.encode();
        assert_eq!(Manifest::decode(&text), Ok(m));
        assert!(text.contains("name web%20server\n"), "{text}");
        assert!(
            !text.contains("codec"),
            "a raw stream needs no line: {text}"
        );
        let m = Manifest {
            codec: Codec::Zstd,
            ..sample()
        };
        let text = m.encode();
        assert!(text.contains("codec zstd\n"), "{text}");
        assert_eq!(Manifest::decode(&text), Ok(m));
    }

    #[test]
    fn any_changed_byte_is_rejected() {
        let text = sample().encode();
        for i in 0..text.len() {
            let mut b = text.clone().into_bytes();
            b[i] = if b[i] == b'7' { b'8' } else { b'7' };
            let Ok(t) = String::from_utf8(b) else {
                continue;
            };
            assert!(
                Manifest::decode(&t).is_err(),
                "byte {i} changed, still accepted"
            );
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        let text = sample().encode();
        for n in 0..text.len() - 1 {
            assert!(Manifest::decode(&text[..n]).is_err(), "cut at {n} accepted");
        }
    }

    #[test]
    fn names_escaping_the_entry_are_rejected() {
        let mut m = sample();
        m.disks[0].rel_path = "../../etc/passwd".into();
        assert!(Manifest::decode(&m.encode())
            .unwrap_err()
            .contains("outside"));
        let mut m = sample();
        m.files[1].name = "../x".into();
        assert!(Manifest::decode(&m.encode()).is_err());
    }

    #[test]
    fn percent_coding_round_trips_odd_text() {
        for s in ["", "a b", "%", "100%", "tab\tnew\nline", "ünï"] {
            assert_eq!(dec(&enc(s)).as_deref(), Some(s));
        }
        assert_eq!(dec("%G1"), None);
        assert_eq!(dec("%4"), None);
    }
}
