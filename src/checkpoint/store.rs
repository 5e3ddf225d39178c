//! The checkpoint directory (`--checkpoints DIR`) on disk.
//!
//! ```text
//! DIR/<key>.<cut>/        one machine's checkpoint (complete: it appeared by rename)
//!     manifest            what the entry holds, each file with its CRC-32 (manifest.rs)
//!     ram                 QEMU's migration stream
//!     console             the console lines of the boot
//!     disk0 …             copies of the disk overlays
//! DIR/.tmp-<pid>-<rand>/  an entry being written by the run with that pid
//! DIR/.trash-<pid>-<rand>/ an entry being deleted
//! ```
//!
//! Concurrent runs on one DIR are safe: an entry is written under a temporary name and
//! renamed into place (a run that loses the race drops its copy); a reader takes a shared
//! `flock` on the manifest for as long as it reads the entry, and eviction skips entries it
//! cannot lock exclusively; every file is checked against its CRC-32 before QEMU sees it, so
//! a torn, truncated or corrupted entry means a cold boot, never a broken guest. Nothing is
//! fsync'ed: after a crash the checksums catch what did not reach the disk. The size cap
//! counts allocated blocks of every entry; the least recently used entries go first.
//! Temporary directories of runs that no longer exist are removed when a run opens DIR.

use super::manifest::{FileRecord, Manifest};
use super::MANIFEST;
use rustix::fs::FlockOperation;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A temporary directory older than this is stale even if a process of its pid exists
/// (pids are reused).
const STALE_TMP_AGE: Duration = Duration::from_secs(24 * 3600);
/// Read size of the checksum jobs.
pub const CHUNK: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    pub dir: PathBuf,
    pub key: String,
    pub cut: String,
    /// Bytes allocated on disk.
    pub size: u64,
    pub last_used: SystemTime,
}

/// An opened checkpoint directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    max_size: u64,
    /// DIR cannot be written (a Nix store path, a read-only mount): restore only.
    read_only: bool,
}

fn random_hex() -> String {
    let mut b = [0u8; 8];
    if rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).is_err() {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b = t.to_le_bytes();
    }
    super::sha256::hex(&b)
}

/// Errors that mean "readable, but not for writing" (EROFS, EACCES, EPERM).
fn read_only_error(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::PermissionDenied
        || e.raw_os_error() == Some(rustix::io::Errno::ROFS.raw_os_error())
}

/// A fresh cut id (the machines saved together).
pub fn new_cut() -> String {
    random_hex()
}

/// Split `<key>.<cut>`; `None` for anything else (temporary and trash directories included).
pub fn parse_entry_name(name: &str) -> Option<(&str, &str)> {
    let (key, cut) = name.split_once('.')?;
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    (key.len() == 32 && hex(key) && hex(cut) && cut.len() <= 32).then_some((key, cut))
}

/// Allocated bytes below `path` (files and directories, symlinks not followed): what a
/// checkpoint directory, an entry or a failure capsule occupies on disk.
pub fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        if let Ok(rd) = std::fs::read_dir(path) {
            for e in rd.flatten() {
                total += disk_usage(&e.path());
            }
        }
    }
    total
}

/// A shared lock on an entry, held while the entry is read.
#[derive(Debug)]
pub struct EntryLock(#[allow(dead_code)] File);

impl Store {
    /// Open (creating it if needed) and check that DIR is a writable directory; removes
    /// stale temporary directories of dead runs. The store keeps DIR's absolute path (QEMU
    /// runs in the machine's state directory and is given paths inside DIR).
    pub fn open(dir: &Path, max_size: u64) -> Result<Store, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let dir = &std::fs::canonicalize(dir)
            .map_err(|e| format!("cannot resolve {}: {e}", dir.display()))?;
        let probe = dir.join(format!(
            ".tmp-{}-probe-{}",
            std::process::id(),
            random_hex()
        ));
        let probed = std::fs::create_dir(&probe).and_then(|()| std::fs::remove_dir(&probe));
        let read_only = match probed {
            Ok(()) => false,
            // A directory that can be read but not written: restore from it, save nothing.
            Err(e) if read_only_error(&e) && std::fs::read_dir(dir).is_ok() => true,
            Err(e) => return Err(format!("{} is not writable: {e}", dir.display())),
        };
        let store = Store {
            dir: dir.to_owned(),
            max_size,
            read_only,
        };
        if !read_only {
            store.sweep();
        }
        Ok(store)
    }

    /// Restore only: DIR cannot be written (see [`Store::open`]).
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Remove temporary and trash directories whose run is gone.
    fn sweep(&self) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name
                .strip_prefix(".tmp-")
                .or_else(|| name.strip_prefix(".trash-"));
            let Some(pid) = rest.and_then(|r| r.split('-').next()?.parse::<u32>().ok()) else {
                continue;
            };
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TMP_AGE);
            let alive = Path::new(&format!("/proc/{pid}")).exists();
            if pid != std::process::id() && (!alive || old) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Every complete entry.
    pub fn entries(&self) -> Vec<EntryInfo> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((key, cut)) = parse_entry_name(&name) else {
                continue;
            };
            let path = e.path();
            let last_used = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            out.push(EntryInfo {
                size: disk_usage(&path),
                dir: path,
                key: key.to_owned(),
                cut: cut.to_owned(),
                last_used,
            });
        }
        out
    }

    /// Entries of `key`, most recently used first.
    pub fn find(&self, key: &str) -> Vec<EntryInfo> {
        let mut v: Vec<EntryInfo> = self
            .entries()
            .into_iter()
            .filter(|e| e.key == key)
            .collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.last_used));
        v
    }

    /// Lock an entry for reading and decode its manifest (checksum verified, key and cut
    /// matching the directory name). The lock is held until it is dropped.
    pub fn load(&self, entry: &EntryInfo) -> Result<(Manifest, EntryLock), String> {
        let path = entry.dir.join(MANIFEST);
        let mut f =
            File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        rustix::fs::flock(&f, FlockOperation::LockShared)
            .map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
        let mut text = String::new();
        f.read_to_string(&mut text)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let m = Manifest::decode(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if m.key != entry.key || m.cut != entry.cut {
            return Err(format!(
                "{}: the manifest belongs to another entry",
                path.display()
            ));
        }
        // Mark it used now (the size cap evicts the least recently used first).
        let _ = rustix::fs::utimensat(
            rustix::fs::CWD,
            &entry.dir,
            &rustix::fs::Timestamps {
                last_access: rustix::fs::Timespec {
                    tv_sec: 0,
                    tv_nsec: rustix::fs::UTIME_NOW,
                },
                last_modification: rustix::fs::Timespec {
                    tv_sec: 0,
                    tv_nsec: rustix::fs::UTIME_NOW,
                },
            },
            rustix::fs::AtFlags::empty(),
        );
        Ok((m, EntryLock(f)))
    }

    /// A new temporary directory for an entry being written.
    pub fn begin(&self) -> io::Result<PathBuf> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the checkpoint directory is read-only",
            ));
        }
        let tmp = self
            .dir
            .join(format!(".tmp-{}-{}", std::process::id(), random_hex()));
        std::fs::create_dir(&tmp)?;
        Ok(tmp)
    }

    /// Write the manifest into `tmp` and rename it to `<key>.<cut>`. `Ok(false)`: another
    /// run saved that entry first (ours is removed).
    pub fn commit(&self, tmp: &Path, m: &Manifest) -> io::Result<bool> {
        let mut f = File::create(tmp.join(MANIFEST))?;
        f.write_all(m.encode().as_bytes())?;
        drop(f);
        let target = self.dir.join(format!("{}.{}", m.key, m.cut));
        match std::fs::rename(tmp, &target) {
            Ok(()) => Ok(true),
            Err(e) if target.exists() => {
                let _ = std::fs::remove_dir_all(tmp);
                let _ = e;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Remove the oldest entries until DIR fits the size cap; entries named in `keep` (just
    /// written) and entries another run reads stay. Returns what was removed.
    pub fn evict(&self, keep: &[PathBuf]) -> Vec<EntryInfo> {
        if self.read_only {
            return Vec::new();
        }
        let mut entries = self.entries();
        let mut total: u64 = entries.iter().map(|e| e.size).sum();
        entries.sort_by_key(|e| e.last_used);
        let mut removed = Vec::new();
        for e in entries {
            if total <= self.max_size {
                break;
            }
            if keep.contains(&e.dir) || !self.try_remove(&e.dir) {
                continue;
            }
            total = total.saturating_sub(e.size);
            removed.push(e);
        }
        removed
    }

    /// Remove one entry unless a reader holds it.
    fn try_remove(&self, dir: &Path) -> bool {
        let Ok(f) = File::open(dir.join(MANIFEST)) else {
            return false;
        };
        if rustix::fs::flock(&f, FlockOperation::NonBlockingLockExclusive).is_err() {
            return false;
        }
        let trash = self
            .dir
            .join(format!(".trash-{}-{}", std::process::id(), random_hex()));
        if std::fs::rename(dir, &trash).is_err() {
            return false;
        }
        drop(f);
        std::fs::remove_dir_all(&trash).is_ok()
    }

    /// Total allocated size of DIR's entries.
    pub fn used(&self) -> u64 {
        self.entries().iter().map(|e| e.size).sum()
    }

    pub fn max_size(&self) -> u64 {
        self.max_size
    }
}

/// Bytes at each end of a read-only image that its identity covers.
const SAMPLE: u64 = 1 << 20;

/// A read-only image's identity: its length and a CRC-32 of its first and last MiB (reading
/// a store image of gigabytes whole at every save and restore would cost seconds).
pub fn sample_identity(path: &Path) -> io::Result<(u64, u32)> {
    use std::io::{Seek, SeekFrom};
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; SAMPLE.min(len) as usize];
    f.read_exact(&mut buf)?;
    h.update(&buf);
    if len > SAMPLE {
        let tail = SAMPLE.min(len - SAMPLE);
        f.seek(SeekFrom::Start(len - tail))?;
        let mut buf = vec![0u8; tail as usize];
        f.read_exact(&mut buf)?;
        h.update(&buf);
    }
    Ok((len, h.finalize()))
}

/// Copy `src` to `dst`, returning the file record (length and CRC-32) of the copy's bytes.
pub fn copy_with_crc(src: &Path, dst: &Path, name: &str) -> io::Result<FileRecord> {
    let mut from = File::open(src)?;
    let mut to = File::create(dst)?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        len += n as u64;
    }
    Ok(FileRecord {
        name: name.to_owned(),
        len,
        crc: h.finalize(),
    })
}

/// Copy an entry's file to `dst`, failing (and removing `dst`) unless its bytes match the
/// record.
pub fn copy_verified(entry: &Path, rec: &FileRecord, dst: &Path) -> Result<(), String> {
    let got = copy_with_crc(&entry.join(&rec.name), dst, &rec.name)
        .map_err(|e| format!("cannot copy {} to {}: {e}", rec.name, dst.display()))?;
    if got.len != rec.len || got.crc != rec.crc {
        let _ = std::fs::remove_file(dst);
        return Err(mismatch(rec, got.len, got.crc));
    }
    Ok(())
}

fn mismatch(rec: &FileRecord, len: u64, crc: u32) -> String {
    if len != rec.len {
        format!(
            "{} is {len} bytes, the manifest says {} (truncated?)",
            rec.name, rec.len
        )
    } else {
        format!(
            "{}: CRC-32 {crc:08x}, the manifest says {:08x} (corrupt)",
            rec.name, rec.crc
        )
    }
}

/// An incremental CRC-32 of one file, advanced a chunk at a time from the poll loop (a
/// 150 MB migration stream must not stall the loop that drains every console).
#[derive(Debug)]
pub struct Checksum {
    file: File,
    hasher: crc32fast::Hasher,
    len: u64,
    buf: Vec<u8>,
}

/// Where a [`Checksum`] is.
#[derive(Debug, PartialEq, Eq)]
pub enum ChecksumStep {
    More,
    /// The whole file: its length and CRC-32.
    Done {
        len: u64,
        crc: u32,
    },
}

impl Checksum {
    pub fn open(path: &Path) -> io::Result<Checksum> {
        Ok(Checksum {
            file: File::open(path)?,
            hasher: crc32fast::Hasher::new(),
            len: 0,
            buf: vec![0u8; CHUNK],
        })
    }

    /// Read up to `budget` bytes.
    pub fn step(&mut self, budget: usize) -> io::Result<ChecksumStep> {
        let mut read = 0;
        while read < budget {
            let n = match self.file.read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok(ChecksumStep::Done {
                    len: self.len,
                    crc: self.hasher.clone().finalize(),
                });
            }
            self.hasher.update(&self.buf[..n]);
            self.len += n as u64;
            read += n;
        }
        Ok(ChecksumStep::More)
    }

    /// Compare a finished checksum with its record.
    pub fn check(rec: &FileRecord, len: u64, crc: u32) -> Result<(), String> {
        if len == rec.len && crc == rec.crc {
            Ok(())
        } else {
            Err(mismatch(rec, len, crc))
        }
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
