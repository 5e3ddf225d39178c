//! Saving a running machine: list its 9p mounts (and read its clock), unmount ntd's shares
//! — then wait until the driver says go, so that every machine of one save stops at the same
//! moment — stop, migrate to `<tmp>/ram` (`exec:cat`, which QEMU 7.2 has), copy the disk
//! overlays and the console lines while it is stopped, continue, set the clock forward by the
//! time it stood still and mount the shares again. The test may go on from there; the
//! outcome goes to the driver, which checksums the migration stream and commits the entries
//! of one save together.

use super::{exec_uri, Machine, Op, Pending, MIGRATION_PATIENCE, OWN_EVENTS, POLL_MIGRATION};
use crate::checkpoint::codec::Codec;
use crate::checkpoint::guest::{self as cg, MountVerdict};
use crate::checkpoint::manifest::{
    DiskRecord, FileRecord, Manifest, Mount9p, ReadOnlyImage, SessionRecord,
};
use crate::checkpoint::store;
use crate::checkpoint::{CONSOLE, RAM};
use crate::json::{obj, Value};
use crate::reactor::Ctx;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Longest wait for the stream's writer after QEMU finished the migration (it is at most a
/// pipe buffer and the compressor's window behind).
const FLUSH_PATIENCE: Duration = Duration::from_secs(60);

/// What the driver asks for: which entry, which save, where to write.
#[derive(Debug, Clone)]
pub(crate) struct SaveRequest {
    pub key: String,
    pub cut: String,
    pub tmp: PathBuf,
    /// How the migration stream is stored.
    pub codec: Codec,
}

/// How a save ended.
#[derive(Debug)]
// One per save, moved a few times: boxing the manifest would gain nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum SaveOutcome {
    /// Everything is in `tmp`; the manifest (without the stream's record, which the driver
    /// adds once it checksummed `tmp/ram`) is for the driver to commit.
    Saved {
        manifest: Manifest,
        tmp: PathBuf,
    },
    /// This machine cannot be saved (said once, as a warning).
    Impossible(String),
    Failed(String),
}

#[derive(Debug)]
enum Step {
    Listing(Instant),
    Unmounting(Instant),
    /// Ready to stop; waiting for the driver.
    Prepared,
    Stopping(Pending),
    Version(Pending),
    Bandwidth(Pending),
    Migrating(Pending),
    Polling {
        query: Option<Pending>,
        next: Instant,
        give_up: Instant,
    },
    Blocks(Pending),
    Continuing(Pending),
    Resuming(Instant),
    /// Running again; waiting for the stream's writer to finish (`ram` appears).
    Flushing {
        next: Instant,
        give_up: Instant,
    },
}

pub(super) struct Save {
    req: SaveRequest,
    step: Step,
    /// ntd's shares, unmounted for the save.
    mounts: Vec<Mount9p>,
    clock_offset_us: i64,
    session: SessionRecord,
    qemu_version: String,
    stopped_at: Option<SystemTime>,
    files: Vec<FileRecord>,
    disks: Vec<DiskRecord>,
    read_only: Vec<ReadOnlyImage>,
    /// Why the save failed; the machine is continued and remounted first.
    error: Option<String>,
}

impl Save {
    /// While true, the test must not use the machine (until it runs again with its shares).
    pub(super) fn owns_machine(&self) -> bool {
        !matches!(self.step, Step::Flushing { .. })
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        match &self.step {
            Step::Listing(t) | Step::Unmounting(t) | Step::Resuming(t) => Some(*t),
            Step::Prepared => None,
            Step::Stopping(p)
            | Step::Version(p)
            | Step::Bandwidth(p)
            | Step::Migrating(p)
            | Step::Blocks(p)
            | Step::Continuing(p) => Some(p.give_up),
            Step::Polling { query, next, .. } => Some(query.map_or(*next, |p| p.give_up)),
            Step::Flushing { next, .. } => Some(*next),
        }
    }
}

impl Machine {
    /// Begin saving this machine (its shell must be idle).
    pub(crate) fn begin_save(&mut self, cx: &mut Ctx<'_>, req: SaveRequest) -> Result<(), String> {
        if self.ckpt.op.is_some() || !self.shell_ready() || self.phase != super::Phase::Running {
            return Err("the machine is not idle".into());
        }
        let t = self.ckpt_shell(cx, cg::LIST_9P.to_owned())?;
        self.ckpt.outcome = None;
        self.ckpt.op = Some(Op::Save(Box::new(Save {
            req,
            step: Step::Listing(t),
            mounts: Vec::new(),
            clock_offset_us: 0,
            session: SessionRecord::default(),
            qemu_version: String::new(),
            stopped_at: None,
            files: Vec::new(),
            disks: Vec::new(),
            read_only: Vec::new(),
            error: None,
        })));
        Ok(())
    }

    /// Unmounted and idle: ready for [`Self::save_go`].
    pub(crate) fn save_prepared(&self) -> bool {
        matches!(&self.ckpt.op, Some(Op::Save(s)) if matches!(s.step, Step::Prepared))
    }

    /// Stop and migrate now (every machine of the save is prepared).
    pub(crate) fn save_go(&mut self, cx: &mut Ctx<'_>) {
        if let Some(Op::Save(mut s)) = self.ckpt.op.take() {
            if matches!(s.step, Step::Prepared) {
                match self.ckpt_qmp(cx, "stop", None) {
                    Ok(p) => s.step = Step::Stopping(p),
                    Err(e) => self.save_fail(cx, &mut s, e),
                }
            }
            self.ckpt.op = Some(Op::Save(s));
        }
    }

    /// Give up a prepared save (another machine of the save failed): mount the shares again.
    pub(crate) fn save_cancel(&mut self, cx: &mut Ctx<'_>) {
        if let Some(Op::Save(mut s)) = self.ckpt.op.take() {
            if matches!(s.step, Step::Prepared) {
                self.save_fail(cx, &mut s, "another machine of the save failed".into());
            }
            self.ckpt.op = Some(Op::Save(s));
        }
    }

    /// The save no longer holds the machine (running again, or over).
    pub(crate) fn save_released(&self) -> bool {
        !matches!(&self.ckpt.op, Some(Op::Save(s)) if s.owns_machine())
    }

    pub(crate) fn take_save_outcome(&mut self) -> Option<SaveOutcome> {
        self.ckpt.outcome.take()
    }

    /// Something went wrong after the machine was touched: continue it if stopped, mount
    /// the shares again, then report the failure.
    fn save_fail(&mut self, cx: &mut Ctx<'_>, s: &mut Save, why: String) {
        s.error.get_or_insert(why);
        if s.stopped_at.is_some() {
            if let Ok(p) = self.ckpt_qmp(cx, "cont", None) {
                s.step = Step::Continuing(p);
                return;
            }
        }
        self.save_resume(cx, s);
    }

    /// After `cont`: set the clock to the host's (it stood still during the stop), mount the
    /// shares again.
    fn save_resume(&mut self, cx: &mut Ctx<'_>, s: &mut Save) {
        let stood_us = s
            .stopped_at
            .and_then(|t| t.elapsed().ok())
            .map_or(0, |d| d.as_micros() as i64);
        let mut cmd = String::new();
        if stood_us > 0 {
            cmd.push_str(&cg::clock_step_command(stood_us - s.clock_offset_us));
            cmd.push_str("; ");
        }
        cmd.push_str(&cg::mount_command(&s.mounts));
        cmd.push(':');
        match self.ckpt_shell(cx, cmd) {
            Ok(t) => s.step = Step::Resuming(t),
            Err(e) => {
                s.error.get_or_insert(e);
                s.step = Step::Resuming(Instant::now());
            }
        }
    }

    /// One step of the save; true when it is over (the outcome is set).
    pub(super) fn advance_save(&mut self, cx: &mut Ctx<'_>, s: &mut Save) -> bool {
        match std::mem::replace(&mut s.step, Step::Prepared) {
            Step::Listing(t) => match self.ckpt_shell_result(t) {
                None => s.step = Step::Listing(t),
                Some(Err(e)) => return self.save_over(SaveOutcome::Failed(e)),
                Some(Ok((_, out))) => {
                    let list = cg::parse_mount_list(&out);
                    s.clock_offset_us = list.now_us.map_or(0, |g| g - Self::now_us());
                    match cg::classify_mounts(&list.mounts) {
                        MountVerdict::Impossible(why) => {
                            return self.save_over(SaveOutcome::Impossible(why))
                        }
                        MountVerdict::Unmount(m) if m.is_empty() => self.save_prepare(cx, s),
                        MountVerdict::Unmount(m) => {
                            let cmd = cg::umount_command(&m);
                            s.mounts = m;
                            match self.ckpt_shell(cx, cmd) {
                                Ok(t) => s.step = Step::Unmounting(t),
                                Err(e) => return self.save_over(SaveOutcome::Failed(e)),
                            }
                        }
                    }
                }
            },
            Step::Unmounting(t) => match self.ckpt_shell_result(t) {
                None => s.step = Step::Unmounting(t),
                Some(Ok((0, _))) => self.save_prepare(cx, s),
                Some(Ok((status, out))) => {
                    let why = format!(
                        "cannot unmount the 9p shares for the save (status {status}: {})",
                        String::from_utf8_lossy(&out).trim()
                    );
                    self.save_fail(cx, s, why);
                }
                Some(Err(e)) => return self.save_over(SaveOutcome::Failed(e)),
            },
            Step::Prepared => {}
            Step::Stopping(p) => match self.ckpt_qmp_result(p) {
                None => s.step = Step::Stopping(p),
                Some(Ok(_)) => {
                    s.stopped_at = Some(SystemTime::now());
                    match self.ckpt_qmp(cx, "query-version", None) {
                        Ok(p) => s.step = Step::Version(p),
                        Err(e) => self.save_fail(cx, s, e),
                    }
                }
                Some(Err(e)) => self.save_fail(cx, s, format!("QMP stop: {e}")),
            },
            Step::Version(p) => match self.ckpt_qmp_result(p) {
                None => s.step = Step::Version(p),
                Some(r) => {
                    s.qemu_version = r.as_ref().map(qemu_version).unwrap_or_default();
                    let args = obj([("max-bandwidth", Value::from(migration_bandwidth()))]);
                    match self.ckpt_qmp(cx, "migrate-set-parameters", Some(args)) {
                        Ok(p) => s.step = Step::Bandwidth(p),
                        Err(e) => self.save_fail(cx, s, e),
                    }
                }
            },
            Step::Bandwidth(p) => match self.ckpt_qmp_result(p) {
                None => s.step = Step::Bandwidth(p),
                Some(Err(e)) => self.save_fail(cx, s, format!("QMP migrate-set-parameters: {e}")),
                Some(Ok(_)) => {
                    let args = exec_uri(s.req.codec.save_command(&s.req.tmp.join(RAM)));
                    match self.ckpt_qmp(cx, "migrate", Some(args)) {
                        Ok(p) => s.step = Step::Migrating(p),
                        Err(e) => self.save_fail(cx, s, e),
                    }
                }
            },
            Step::Migrating(p) => match self.ckpt_qmp_result(p) {
                None => s.step = Step::Migrating(p),
                Some(Ok(_)) => {
                    s.step = Step::Polling {
                        query: None,
                        next: Instant::now() + POLL_MIGRATION,
                        give_up: Instant::now() + MIGRATION_PATIENCE,
                    }
                }
                Some(Err(e)) => self.save_fail(cx, s, format!("QMP migrate: {e}")),
            },
            Step::Polling {
                query,
                next,
                give_up,
            } => self.save_poll(cx, s, query, next, give_up),
            Step::Blocks(p) => match self.ckpt_qmp_result(p) {
                None => s.step = Step::Blocks(p),
                Some(Err(e)) => self.save_fail(cx, s, format!("QMP query-block: {e}")),
                Some(Ok(v)) => match self.save_files(s, &v) {
                    Ok(()) => match self.ckpt_qmp(cx, "cont", None) {
                        Ok(p) => s.step = Step::Continuing(p),
                        Err(e) => self.save_fail(cx, s, e),
                    },
                    Err(e) => self.save_fail(cx, s, e),
                },
            },
            Step::Continuing(p) => match self.ckpt_qmp_result(p) {
                None => s.step = Step::Continuing(p),
                Some(r) => {
                    self.qmp_client.forget_events(OWN_EVENTS);
                    if let Err(e) = r {
                        s.error.get_or_insert(format!("QMP cont: {e}"));
                    }
                    self.save_resume(cx, s);
                }
            },
            Step::Resuming(t) => match self.ckpt_shell_result(t) {
                None => s.step = Step::Resuming(t),
                Some(r) => {
                    let failed = r.map(|(_, out)| cg::parse_fixup(&out).mount_failed);
                    match failed {
                        Ok(tags) if !tags.is_empty() => cx.log.warning(
                            Some(&self.name),
                            &format!("cannot mount the 9p shares {tags:?} again after the save"),
                        ),
                        Ok(_) => {}
                        Err(e) => {
                            s.error.get_or_insert(e);
                        }
                    }
                    if let Some(e) = s.error.take() {
                        return self.save_over(SaveOutcome::Failed(e));
                    }
                    let now = Instant::now();
                    s.step = Step::Flushing {
                        next: now,
                        give_up: now + FLUSH_PATIENCE,
                    };
                }
            },
            Step::Flushing { next, give_up } => {
                let now = Instant::now();
                if s.req.tmp.join(RAM).exists() {
                    let manifest = self.save_manifest(s);
                    return self.save_over(SaveOutcome::Saved {
                        manifest,
                        tmp: s.req.tmp.clone(),
                    });
                }
                if now >= give_up {
                    return self.save_over(SaveOutcome::Failed(
                        "the migration stream's writer did not finish in time".into(),
                    ));
                }
                s.step = Step::Flushing {
                    next: if now >= next {
                        now + POLL_MIGRATION
                    } else {
                        next
                    },
                    give_up,
                };
            }
        }
        false
    }

    fn save_over(&mut self, outcome: SaveOutcome) -> bool {
        self.ckpt.outcome = Some(outcome);
        true
    }

    /// The shares are unmounted: remember the shell's state, wait for the driver.
    fn save_prepare(&mut self, cx: &mut Ctx<'_>, s: &mut Save) {
        match self.session.saved() {
            Some(saved) => {
                s.session = SessionRecord {
                    spool_used: saved.spool_used,
                    spool: saved.spool,
                    timeouts: saved.sent_timeouts,
                    waits: saved.sent_waits,
                };
                s.step = Step::Prepared;
            }
            None => self.save_fail(cx, s, "the guest shell is not idle".into()),
        }
    }

    fn save_poll(
        &mut self,
        cx: &mut Ctx<'_>,
        s: &mut Save,
        query: Option<Pending>,
        next: Instant,
        give_up: Instant,
    ) {
        let now = Instant::now();
        let polling = |query| Step::Polling {
            query,
            next: now + POLL_MIGRATION,
            give_up,
        };
        let Some(p) = query else {
            s.step = Step::Polling {
                query,
                next,
                give_up,
            };
            if now >= give_up {
                self.save_fail(cx, s, "the migration did not finish in time".into());
            } else if now >= next {
                match self.ckpt_qmp(cx, "query-migrate", None) {
                    Ok(p) => s.step = polling(Some(p)),
                    Err(e) => self.save_fail(cx, s, e),
                }
            }
            return;
        };
        match self.ckpt_qmp_result(p) {
            None => {
                s.step = Step::Polling {
                    query,
                    next,
                    give_up,
                }
            }
            Some(Ok(v)) => match Self::migration_status(&v) {
                Ok(true) => match self.ckpt_qmp(cx, "query-block", None) {
                    Ok(p) => s.step = Step::Blocks(p),
                    Err(e) => self.save_fail(cx, s, e),
                },
                Ok(false) => s.step = polling(None),
                Err(e) => self.save_fail(cx, s, e),
            },
            Some(Err(e)) => self.save_fail(cx, s, format!("QMP query-migrate: {e}")),
        }
    }

    /// While the machine is stopped: copy its writable disk images (they must live in its
    /// state directory, where the next run's start script finds them) and its console lines.
    fn save_files(&mut self, s: &mut Save, blocks: &Value) -> Result<(), String> {
        let state = std::fs::canonicalize(&self.paths.state_dir)
            .map_err(|e| format!("cannot resolve the state directory: {e}"))?;
        for (n, file) in writable_images(blocks)?.into_iter().enumerate() {
            let rel = Path::new(&file)
                .canonicalize()
                .ok()
                .and_then(|p| p.strip_prefix(&state).ok().map(Path::to_path_buf))
                .ok_or_else(|| {
                    format!(
                        "the writable disk image {file} is outside the machine's state \
                         directory, so a checkpoint could not put it back"
                    )
                })?;
            let name = format!("disk{n}");
            let rec = store::copy_with_crc(Path::new(&file), &s.req.tmp.join(&name), &name)
                .map_err(|e| format!("cannot copy the disk image {file}: {e}"))?;
            s.files.push(rec);
            s.disks.push(DiskRecord {
                file: name,
                rel_path: rel.display().to_string(),
            });
        }
        for file in read_only_images(blocks) {
            let (len, sample_crc) = store::sample_identity(Path::new(&file))
                .map_err(|e| format!("cannot read the read-only disk image {file}: {e}"))?;
            let rel = Path::new(&file)
                .canonicalize()
                .ok()
                .and_then(|p| p.strip_prefix(&state).ok().map(Path::to_path_buf));
            s.read_only.push(ReadOnlyImage {
                in_state_dir: rel.is_some(),
                path: rel.map_or(file, |r| r.display().to_string()),
                len,
                sample_crc,
            });
        }
        let mut console = self.console.log_text();
        console.push('\n');
        let path = s.req.tmp.join(CONSOLE);
        std::fs::write(&path, console.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        s.files.push(FileRecord {
            name: CONSOLE.into(),
            len: console.len() as u64,
            crc: crc32fast::hash(console.as_bytes()),
        });
        Ok(())
    }

    fn save_manifest(&self, s: &Save) -> Manifest {
        Manifest {
            key: s.req.key.clone(),
            cut: s.req.cut.clone(),
            name: self.name.clone(),
            saved_at_ms: s
                .stopped_at
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as u64),
            qemu_version: s.qemu_version.clone(),
            clock_offset_us: s.clock_offset_us,
            session: s.session,
            disks: s.disks.clone(),
            mounts: s.mounts.clone(),
            files: s.files.clone(),
            codec: s.req.codec,
            read_only: s.read_only.clone(),
        }
    }
}

/// Bytes per second a save may write: QEMU's default cap (128 MiB/s) is for a live migration
/// over a network; a stopped machine writing into a local file goes as fast as it can.
/// `NTD_TEST_MIGRATION_BANDWIDTH` (bytes per second) slows it down for the fault tests, which
/// need a save that is still running when they interrupt it.
fn migration_bandwidth() -> i64 {
    std::env::var("NTD_TEST_MIGRATION_BANDWIDTH")
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|&b| b > 0)
        .unwrap_or(UNCAPPED)
}

/// "As fast as it can" for QEMU's `max-bandwidth` (64 GiB/s).
const UNCAPPED: i64 = 64 << 30;

/// `major.minor.micro` from `query-version`.
pub(super) fn qemu_version(v: &Value) -> String {
    let q = v.get("qemu");
    let n = |k: &str| {
        q.and_then(|q| q.get(k))
            .and_then(Value::as_i64)
            .unwrap_or(-1)
    };
    format!("{}.{}.{}", n("major"), n("minor"), n("micro"))
}

/// The files of the read-only block devices with a file in a `query-block` answer.
pub(super) fn read_only_images(blocks: &Value) -> Vec<String> {
    blocks
        .as_array()
        .unwrap_or_default()
        .iter()
        .filter_map(|dev| dev.get("inserted"))
        .filter(|ins| ins.get("ro").and_then(Value::as_bool) == Some(true))
        .filter_map(|ins| ins.get("file").and_then(Value::as_str))
        .filter(|f| f.starts_with('/'))
        .map(str::to_owned)
        .collect()
}

/// The files of the writable block devices in a `query-block` answer.
pub(super) fn writable_images(blocks: &Value) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for dev in blocks.as_array().unwrap_or_default() {
        let Some(ins) = dev.get("inserted") else {
            continue;
        };
        if ins.get("ro").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        match ins.get("file").and_then(Value::as_str) {
            Some(f) if f.starts_with('/') => out.push(f.to_owned()),
            other => {
                return Err(format!(
                    "cannot tell which file the writable disk {} is ({})",
                    dev.get("device").and_then(Value::as_str).unwrap_or("?"),
                    other.unwrap_or("no file name")
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_images_skip_read_only_and_empty_drives() {
        let v = Value::parse(
            br#"[{"device":"drive1","inserted":{"ro":false,"file":"/run/vm-state-m/m.qcow2"}},
                 {"device":"drive2","inserted":{"ro":true,"file":"/nix/store/x-store.img"}},
                 {"device":"cd0"}]"#,
        )
        .unwrap();
        assert_eq!(writable_images(&v).unwrap(), ["/run/vm-state-m/m.qcow2"]);
        assert_eq!(read_only_images(&v), ["/nix/store/x-store.img"]);
        let v =
            Value::parse(br#"[{"device":"d","inserted":{"ro":false,"file":"json:{}"}}]"#).unwrap();
        assert!(
            writable_images(&v)
                .unwrap_err()
                .contains("disk d is (json:{})"),
            "an image QEMU names as json: cannot be copied"
        );
    }

    #[test]
    fn qemu_version_reads_query_version() {
        let v =
            Value::parse(br#"{"qemu":{"major":7,"minor":2,"micro":22},"package":"x"}"#).unwrap();
        assert_eq!(qemu_version(&v), "7.2.22");
        assert_eq!(qemu_version(&Value::Null), "-1.-1.-1");
    }
}
