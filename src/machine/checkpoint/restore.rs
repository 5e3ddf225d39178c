//! Starting a machine from a checkpoint: the disk overlays are copied back (checked) before
//! the start script runs with `-incoming defer`; the migration stream is checksummed while
//! QEMU starts; then `query-version` (it must be the QEMU that saved), `migrate-incoming`,
//! `cont`, the shell session resumed where it was saved, and the guest fixed: clock from the
//! host, fresh entropy (the vmgenid device reseeds the CRNG; host bytes are mixed in too), the
//! 9p shares mounted again. Any failure on the way kills this QEMU and boots normally.

use super::save::qemu_version;
use super::{
    exec_uri, Machine, Pending, RestorePlan, CHECKSUM_BUDGET, MIGRATION_PATIENCE, OWN_EVENTS,
    POLL_MIGRATION,
};
use crate::checkpoint::guest as cg;
use crate::checkpoint::manifest::FileRecord;
use crate::checkpoint::store::{self, Checksum, ChecksumStep};
use crate::checkpoint::{CONSOLE, RAM};
use crate::machine::boot::Milestone;
use crate::machine::session::SavedSession;
use crate::reactor::Ctx;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Host random bytes written into the restored guest's pool.
const RANDOM_BYTES: usize = 32;

#[derive(Debug)]
enum Step {
    /// QEMU starting; the stream being checked.
    Starting,
    Version(Pending),
    Incoming(Pending),
    Polling {
        query: Option<Pending>,
        next: Instant,
        give_up: Instant,
    },
    Continuing(Pending),
    Fixup(Instant),
    /// Reading the guest clock: when the command was sent (host µs) and the give-up time.
    Measure {
        sent_us: i64,
        give_up: Instant,
    },
    Clock(Instant),
    /// This QEMU is being killed; a normal boot follows its exit.
    FallingBack,
}

pub(in crate::machine) struct Restore {
    plan: RestorePlan,
    /// The boot's console lines, replayed once QEMU runs.
    pub(super) console: String,
    step: Step,
    /// The migration stream's check, until it passed.
    checksum: Option<Box<Checksum>>,
    started: Instant,
    /// Host clock (µs) when the guest ran again.
    resumed_at_us: i64,
    clock_steps: u32,
    /// Disk overlays copied into the state directory.
    copied: Vec<PathBuf>,
    /// Why it failed (for a restore without fallback).
    pub(super) error: Option<String>,
}

fn record<'a>(files: &'a [FileRecord], name: &str) -> Result<&'a FileRecord, String> {
    files
        .iter()
        .find(|f| f.name == name)
        .ok_or_else(|| format!("the manifest lists no {name}"))
}

impl Restore {
    /// Put the disk overlays where the start script looks for them and read the console
    /// lines, checking both; open the stream for its check.
    pub(super) fn prepare(plan: RestorePlan, state_dir: &Path) -> Result<Restore, String> {
        let m = &plan.manifest;
        let rec = record(&m.files, CONSOLE)?;
        let mut console = String::new();
        std::fs::File::open(plan.entry.join(CONSOLE))
            .and_then(|mut f| f.read_to_string(&mut console))
            .map_err(|e| format!("cannot read the console lines: {e}"))?;
        Checksum::check(
            rec,
            console.len() as u64,
            crc32fast::hash(console.as_bytes()),
        )?;
        let mut copied = Vec::new();
        for d in &m.disks {
            let dst = state_dir.join(&d.rel_path);
            let copy = record(&m.files, &d.file).and_then(|rec| {
                if let Some(parent) = dst.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
                }
                store::copy_verified(&plan.entry, rec, &dst)
            });
            if let Err(e) = copy {
                copied.iter().for_each(|p| drop(std::fs::remove_file(p)));
                return Err(e);
            }
            copied.push(dst);
        }
        record(&m.files, RAM)?;
        let checksum = Checksum::open(&plan.entry.join(RAM))
            .map_err(|e| format!("cannot open the migration stream: {e}"));
        let checksum = match checksum {
            Ok(c) => c,
            Err(e) => {
                copied.iter().for_each(|p| drop(std::fs::remove_file(p)));
                return Err(e);
            }
        };
        Ok(Restore {
            plan,
            console,
            step: Step::Starting,
            checksum: Some(Box::new(checksum)),
            started: Instant::now(),
            resumed_at_us: 0,
            clock_steps: 0,
            copied,
            error: None,
        })
    }

    /// What the checkpoint is called in messages (a named snapshot: `snapshot 'x'`).
    pub(super) fn key(&self) -> &str {
        &self.plan.manifest.key
    }

    pub(super) fn cut(&self) -> &str {
        &self.plan.manifest.cut
    }

    /// A failure boots normally (a boot checkpoint).
    pub(super) fn fallback(&self) -> bool {
        self.plan.fallback
    }

    pub(super) fn replays_console(&self) -> bool {
        self.plan.replay_console
    }

    pub(super) fn falling_back(&self) -> bool {
        matches!(self.step, Step::FallingBack)
    }

    pub(super) fn remove_disk_copies(&self, _state_dir: &Path) {
        for p in &self.copied {
            let _ = std::fs::remove_file(p);
        }
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        match &self.step {
            // Work to do: a moment in the past, so the loop's timer pass runs it now.
            Step::Starting => self.checksum.as_ref().map(|_| self.started),
            Step::Version(p) | Step::Incoming(p) | Step::Continuing(p) => Some(p.give_up),
            Step::Polling { query, next, .. } => Some(query.map_or(*next, |p| p.give_up)),
            Step::Fixup(t) | Step::Clock(t) => Some(*t),
            Step::Measure { give_up, .. } => Some(*give_up),
            Step::FallingBack => None,
        }
    }
}

impl Machine {
    /// Give up this restore: kill QEMU; its exit starts a normal boot (`checkpoint_exit`),
    /// or, without fallback, leaves the machine stopped with the error for whoever asked.
    fn restore_fail(&mut self, cx: &mut Ctx<'_>, r: &mut Restore, why: &str) {
        if r.fallback() {
            cx.log.warning(
                Some(&self.name),
                &format!("cannot restore from the checkpoint: {why}; booting normally"),
            );
        }
        r.error = Some(why.to_owned());
        r.step = Step::FallingBack;
        self.kill_now();
    }

    /// One step of the restore; true when it is over (restored, or a normal boot started).
    pub(super) fn advance_restore(&mut self, cx: &mut Ctx<'_>, r: &mut Restore) -> bool {
        match std::mem::replace(&mut r.step, Step::FallingBack) {
            Step::Starting => {
                if let Some(c) = r.checksum.as_mut() {
                    match c.step(CHECKSUM_BUDGET) {
                        Ok(ChecksumStep::More) => {}
                        Ok(ChecksumStep::Done { len, crc }) => {
                            let check = record(&r.plan.manifest.files, RAM)
                                .and_then(|rec| Checksum::check(rec, len, crc));
                            if let Err(e) = check {
                                self.restore_fail(cx, r, &e);
                                return false;
                            }
                            r.checksum = None;
                        }
                        Err(e) => {
                            self.restore_fail(cx, r, &format!("cannot read the stream: {e}"));
                            return false;
                        }
                    }
                }
                r.step = Step::Starting;
                if r.checksum.is_none() && self.qmp_ready() {
                    match self.ckpt_qmp(cx, "query-version", None) {
                        Ok(p) => r.step = Step::Version(p),
                        Err(e) => self.restore_fail(cx, r, &e),
                    }
                }
            }
            Step::Version(p) => match self.ckpt_qmp_result(p) {
                None => r.step = Step::Version(p),
                Some(Err(e)) => self.restore_fail(cx, r, &format!("QMP query-version: {e}")),
                Some(Ok(v)) => {
                    let version = qemu_version(&v);
                    if version != r.plan.manifest.qemu_version {
                        let why = format!(
                            "this QEMU is version {version}, the checkpoint was saved by {}",
                            r.plan.manifest.qemu_version
                        );
                        self.restore_fail(cx, r, &why);
                    } else if let Err(why) = self.check_read_only(r) {
                        self.restore_fail(cx, r, &why);
                    } else {
                        let args =
                            exec_uri(r.plan.manifest.codec.load_command(&r.plan.entry.join(RAM)));
                        match self.ckpt_qmp(cx, "migrate-incoming", Some(args)) {
                            Ok(p) => r.step = Step::Incoming(p),
                            Err(e) => self.restore_fail(cx, r, &e),
                        }
                    }
                }
            },
            Step::Incoming(p) => match self.ckpt_qmp_result(p) {
                None => r.step = Step::Incoming(p),
                Some(Ok(_)) => {
                    r.step = Step::Polling {
                        query: None,
                        next: Instant::now() + super::POLL_MIGRATION,
                        give_up: Instant::now() + MIGRATION_PATIENCE,
                    }
                }
                Some(Err(e)) => self.restore_fail(cx, r, &format!("QMP migrate-incoming: {e}")),
            },
            Step::Polling {
                query,
                next,
                give_up,
            } => self.restore_poll(cx, r, query, next, give_up),
            Step::Continuing(p) => match self.ckpt_qmp_result(p) {
                None => r.step = Step::Continuing(p),
                Some(Err(e)) => self.restore_fail(cx, r, &format!("QMP cont: {e}")),
                Some(Ok(_)) => {
                    self.qmp_client.forget_events(OWN_EVENTS);
                    let s = r.plan.manifest.session;
                    self.session.resume(SavedSession {
                        spool_used: s.spool_used,
                        spool: s.spool,
                        sent_timeouts: s.timeouts,
                        sent_waits: s.waits,
                    });
                    // The guest clock stood still from the save until now.
                    let m = &r.plan.manifest;
                    let saved_at_us = m.saved_at_ms as i64 * 1000;
                    let correction = r.resumed_at_us - saved_at_us - m.clock_offset_us;
                    let mut random = [0u8; RANDOM_BYTES];
                    let _ =
                        rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty());
                    let cmd = cg::fixup_command(correction, &random, &m.mounts);
                    match self.ckpt_shell(cx, cmd) {
                        Ok(t) => r.step = Step::Fixup(t),
                        Err(e) => self.restore_fail(cx, r, &e),
                    }
                }
            },
            step @ (Step::Fixup(t) | Step::Clock(t)) => match self.ckpt_shell_result(t) {
                None => r.step = step,
                Some(Err(e)) => self.restore_fail(cx, r, &e),
                Some(Ok((_, out))) => {
                    let report = cg::parse_fixup(&out);
                    if matches!(step, Step::Fixup(_)) {
                        self.fixup_warnings(cx, &report);
                    }
                    if report.clock_failed || report.whole_seconds {
                        // Nothing more to gain from measuring.
                        return self.restore_done(cx, r, None);
                    }
                    let sent_us = Self::now_us();
                    match self.ckpt_shell(cx, cg::NOW_COMMAND.to_owned()) {
                        Ok(give_up) => r.step = Step::Measure { sent_us, give_up },
                        Err(e) => self.restore_fail(cx, r, &e),
                    }
                }
            },
            Step::Measure { sent_us, give_up } => match self.ckpt_shell_result(give_up) {
                None => r.step = Step::Measure { sent_us, give_up },
                Some(Err(e)) => self.restore_fail(cx, r, &e),
                Some(Ok((_, out))) => {
                    let now = Self::now_us();
                    let mid = sent_us + (now - sent_us) / 2;
                    let error = cg::parse_mount_list(&out).now_us.map(|g| g - mid);
                    match error.and_then(cg::clock_correction) {
                        Some(c) if r.clock_steps < cg::CLOCK_STEPS => {
                            r.clock_steps += 1;
                            match self.ckpt_shell(cx, cg::clock_step_command(c)) {
                                Ok(t) => r.step = Step::Clock(t),
                                Err(e) => self.restore_fail(cx, r, &e),
                            }
                        }
                        _ => return self.restore_done(cx, r, error),
                    }
                }
            },
            Step::FallingBack => r.step = Step::FallingBack,
        }
        false
    }

    /// The read-only disk images are the ones the saved machine had (they are not part of
    /// the checkpoint; the start script has made those in its state directory by now).
    fn check_read_only(&self, r: &Restore) -> Result<(), String> {
        for ro in &r.plan.manifest.read_only {
            let path = if ro.in_state_dir {
                self.paths.state_dir.join(&ro.path)
            } else {
                PathBuf::from(&ro.path)
            };
            let got = store::sample_identity(&path)
                .map_err(|e| format!("the read-only disk image {}: {e}", path.display()))?;
            if got != (ro.len, ro.sample_crc) {
                return Err(format!(
                    "the read-only disk image {} is not the one the checkpoint was saved with \
                     ({} bytes, sample CRC-32 {:08x}; saved: {} bytes, {:08x})",
                    path.display(),
                    got.0,
                    got.1,
                    ro.len,
                    ro.sample_crc
                ));
            }
        }
        Ok(())
    }

    fn restore_poll(
        &mut self,
        cx: &mut Ctx<'_>,
        r: &mut Restore,
        query: Option<Pending>,
        next: Instant,
        give_up: Instant,
    ) {
        let now = Instant::now();
        let Some(p) = query else {
            r.step = Step::Polling {
                query,
                next,
                give_up,
            };
            if now >= give_up {
                self.restore_fail(cx, r, "loading the state did not finish in time");
            } else if now >= next {
                match self.ckpt_qmp(cx, "query-migrate", None) {
                    Ok(p) => {
                        r.step = Step::Polling {
                            query: Some(p),
                            next,
                            give_up,
                        }
                    }
                    Err(e) => self.restore_fail(cx, r, &e),
                }
            }
            return;
        };
        match self.ckpt_qmp_result(p) {
            None => {
                r.step = Step::Polling {
                    query,
                    next,
                    give_up,
                }
            }
            Some(Err(e)) => self.restore_fail(cx, r, &format!("QMP query-migrate: {e}")),
            Some(Ok(v)) => match Self::migration_status(&v) {
                Ok(true) => {
                    r.resumed_at_us = Self::now_us();
                    self.boot.mark(Milestone::Restored);
                    match self.ckpt_qmp(cx, "cont", None) {
                        Ok(p) => r.step = Step::Continuing(p),
                        Err(e) => self.restore_fail(cx, r, &e),
                    }
                }
                Ok(false) => {
                    r.step = Step::Polling {
                        query: None,
                        next: now + POLL_MIGRATION,
                        give_up,
                    }
                }
                Err(e) => self.restore_fail(cx, r, &e),
            },
        }
    }

    fn fixup_warnings(&mut self, cx: &mut Ctx<'_>, report: &cg::FixupReport) {
        let name = Some(self.name.as_str());
        if report.clock_failed {
            cx.log.warning(
                name,
                "cannot set the restored guest's clock (no `date -s`?)",
            );
        }
        if report.no_vmgenid {
            cx.log.warning(
                name,
                "the restored guest has no VM generation ID (no vmgenid device, or its kernel \
                 lacks CONFIG_VMGENID): its random number generator is not reseeded after the \
                 restore, so /dev/urandom repeats what the saved machine produced until the \
                 kernel reseeds by itself (within a minute)",
            );
        }
        if !report.mount_failed.is_empty() {
            cx.log.warning(
                name,
                &format!(
                    "cannot mount the 9p shares {:?} again after the restore",
                    report.mount_failed
                ),
            );
        }
    }

    fn restore_done(
        &mut self,
        cx: &mut Ctx<'_>,
        r: &mut Restore,
        clock_error_us: Option<i64>,
    ) -> bool {
        let m = &r.plan.manifest;
        self.boot.mark(Milestone::ShellReady);
        let ms = r.started.elapsed().as_millis();
        let what = if r.fallback() {
            format!(
                "restored from checkpoint (key {}, saved {}) in {ms} ms",
                m.key, m.cut
            )
        } else {
            format!("restored from {} in {ms} ms", m.key)
        };
        cx.log.machine(&self.name, &what);
        if let Some(e) = clock_error_us {
            cx.log.debug(
                Some(&self.name),
                &format!("guest clock set; {:.3} s off the host's", e as f64 / 1e6),
            );
        }
        self.ckpt.restored = Some(m.cut.clone());
        true
    }
}
