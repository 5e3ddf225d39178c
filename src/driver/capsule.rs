//! Failure capsules: `--keep-failed DIR` saves every running machine when the test fails
//! (the script raised, or the global timeout ran out), together with the driver log, the
//! trace, the test script and a description ([`crate::checkpoint::capsule`]); `ntd resume
//! DIR` starts those machines from it and opens the REPL.
//!
//! The log is written to a private file from the start of the run (so the capsule has all
//! of it) and a trace is recorded even without `--trace`. At the failure, before anything
//! is stopped, the machines whose shell is idle are saved together ([`SaveGroup`], each on
//! its own), their migration streams compressed by an installed `zstd` (else `gzip`; ntd
//! links no compressor) as QEMU writes them. A machine whose shell was busy, or with a 9p
//! share ntd does not manage, is listed with the reason. A successful run leaves nothing.

use super::control::Controlled;
use super::node::Node;
use super::save_group::{GroupState, SaveGroup, CHECKSUM_STEP};
use super::{Driver, Termination};
use crate::checkpoint::capsule::{self, Capsule, CapsuleMachine};
use crate::checkpoint::codec::{self, Codec};
use crate::checkpoint::manifest::Manifest;
use crate::checkpoint::{store, MANIFEST};
use crate::log::terminal::Terminal;
use crate::log::{LineKind, LogEvent, Sink};
use crate::machine::{RestorePlan, SaveOutcome, SaveRequest};
use crate::reactor::Ctx;
use crate::trace::Trace;
use mio::Events;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

/// Longest capsule save (every machine stopped, migrated and compressed).
const CAPSULE_PATIENCE: Duration = Duration::from_secs(180);
/// Longest poll while saving.
const TICK: Duration = Duration::from_millis(50);

/// A capsule to write if the test fails.
pub(super) struct CapsuleState {
    dir: PathBuf,
    /// Private directory of the run: the log file, an own trace.
    staging: PathBuf,
    /// DIR did not exist before the run (a successful run removes it again).
    created_dir: bool,
    /// The trace was recorded only for the capsule.
    own_trace: bool,
    /// Set once the machines were saved: the description to write at the end.
    saved: Option<Capsule>,
    /// The trace files written at cleanup.
    trace_files: Vec<PathBuf>,
    /// The script's exception, as Python printed it (`failure` op).
    traceback: Option<String>,
    /// The log's last failure-report line (`!!! …`), for the description's reason.
    last_error: Rc<RefCell<Option<String>>>,
}

/// Keeps the last test-error line of the log.
struct LastError(Rc<RefCell<Option<String>>>);

impl Sink for LastError {
    fn event(&mut self, ev: &LogEvent<'_>) {
        if let LogEvent::Line {
            kind: LineKind::TestError,
            msg,
            ..
        } = ev
        {
            if !msg.trim().is_empty() {
                *self.0.borrow_mut() = Some(msg.trim().to_owned());
            }
        }
    }
}

impl Driver {
    /// `--keep-failed DIR`: check DIR, log into a private file, record a trace.
    pub(super) fn setup_capsule(&mut self) {
        let Some(dir) = self.opts.keep_failed.clone() else {
            return;
        };
        let created_dir = !dir.exists();
        let usable = std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create it: {e}"))
            .and_then(|()| match std::fs::read_dir(&dir) {
                Err(e) => Err(format!("cannot read it: {e}")),
                Ok(mut d) => {
                    if d.next().is_none() || dir.join(capsule::FILE).exists() {
                        Ok(())
                    } else {
                        Err("it is not empty and holds no capsule".into())
                    }
                }
            });
        // Absolute: QEMU writes the streams from its machine's state directory.
        let usable = usable.and_then(|()| {
            std::fs::canonicalize(&dir).map_err(|e| format!("cannot resolve it: {e}"))
        });
        let dir = match usable {
            Ok(d) => d,
            Err(why) => {
                self.log.warning(
                    None,
                    &format!(
                        "--keep-failed {}: {why}; no capsule will be written",
                        dir.display()
                    ),
                );
                return;
            }
        };
        let staging = self
            .tmp_dir
            .join(format!("ntd-capsule-{}", std::process::id()));
        let log = std::fs::create_dir_all(&staging)
            .and_then(|()| std::fs::File::create(staging.join(capsule::LOG)));
        match log {
            Ok(f) => self
                .log
                .add_sink(Box::new(Terminal::new(false, Box::new(f)))),
            Err(e) => self.log.warning(
                None,
                &format!("--keep-failed: cannot write the log copy: {e}"),
            ),
        }
        let last_error = Rc::new(RefCell::new(None));
        self.log.add_sink(Box::new(LastError(last_error.clone())));
        let own_trace = self.trace.is_none();
        if own_trace {
            let t = Trace::new(staging.join("trace.json"), self.started);
            self.log.add_sink(Box::new(t.sink()));
            self.trace = Some(t);
        }
        self.capsule = Some(CapsuleState {
            dir,
            staging,
            created_dir,
            own_trace,
            saved: None,
            trace_files: Vec::new(),
            traceback: None,
            last_error,
        });
    }

    /// The trace is written only for the capsule (not announced as the user's).
    pub(super) fn trace_for_capsule_only(&self) -> bool {
        self.capsule.as_ref().is_some_and(|c| c.own_trace)
    }

    /// The script raised: keep its traceback for the capsule.
    pub(super) fn note_failure(&mut self, text: String) {
        if let Some(c) = self.capsule.as_mut() {
            c.traceback = Some(text);
        }
    }

    pub(super) fn note_trace_files(&mut self, files: Vec<PathBuf>) {
        if let Some(c) = self.capsule.as_mut() {
            c.trace_files = files;
        }
    }

    /// The test failed: save every machine that can be saved into the capsule directory.
    pub(super) fn save_capsule(&mut self, mut reason: String) {
        let Some(cap) = self.capsule.as_ref() else {
            return;
        };
        // The exception's last line (or the failure report's) says what went wrong.
        let last = cap
            .traceback
            .as_deref()
            .and_then(|t| t.lines().rev().find(|l| !l.trim().is_empty()))
            .map(|l| l.trim().to_owned())
            .or_else(|| cap.last_error.borrow().clone());
        if let Some(last) = last {
            reason = format!("{reason}: {last}");
        }
        let dir = cap.dir.clone();
        self.log.begin(None, "saving the failure capsule");
        clear_capsule(&dir);
        let codec = Codec::best(&codec::on_path);
        let cut = store::new_cut();
        let mut results: Vec<Result<(), String>> = vec![Ok(()); self.machines.len()];
        let mut reqs = Vec::new();
        for (i, m) in self.machines.iter().enumerate() {
            results[i] = if m.as_vm().is_none() {
                Err("a container is not saved (it boots again in well under a second)".into())
            } else if !m.booted() {
                Err("it was not running".into())
            } else if !m.connected() {
                Err("its shell was not connected (still booting?)".into())
            } else if !m.shell_ready() {
                Err(
                    "its shell was busy with a command when the test failed (a capsule \
                     saves machines whose shell is idle)"
                        .into(),
                )
            } else {
                let tmp = dir.join(format!(".tmp-{}", m.name()));
                match std::fs::create_dir_all(&tmp) {
                    Ok(()) => {
                        reqs.push((
                            i,
                            i,
                            SaveRequest {
                                key: "the failure capsule".into(),
                                cut: cut.clone(),
                                tmp,
                                codec,
                            },
                        ));
                        Ok(())
                    }
                    Err(e) => Err(format!("cannot create {}: {e}", tmp.display())),
                }
            };
        }
        let mut cx = Ctx {
            registry: self.poll.registry(),
            log: &mut self.log,
        };
        let (group, refused) = SaveGroup::begin(&mut self.machines, &mut cx, reqs, Instant::now());
        for (i, why) in refused {
            results[i] = Err(why);
        }
        let outcomes = match self.run_capsule_group(group) {
            Some(o) => o,
            None => {
                // Cut short (a signal, or too slow): nothing half-written stays.
                clear_capsule(&dir);
                self.log.end(false);
                return;
            }
        };
        for (i, o) in outcomes {
            results[i] = match o {
                SaveOutcome::Saved { manifest, tmp } => {
                    let target = dir.join(capsule::MACHINES).join(self.machines[i].name());
                    place_entry(&tmp, &manifest, &target).map_err(|e| {
                        let _ = std::fs::remove_dir_all(&tmp);
                        format!("cannot store it: {e}")
                    })
                }
                SaveOutcome::Impossible(why) | SaveOutcome::Failed(why) => Err(why),
            };
        }
        let machines = self
            .machines
            .iter()
            .zip(results)
            .filter_map(|(m, saved)| {
                match &saved {
                    Ok(()) => self.log.machine(m.name(), "saved into the failure capsule"),
                    Err(why) => self.log.warning(
                        Some(m.name()),
                        &format!("not in the failure capsule: {why}"),
                    ),
                }
                // A capsule describes its VMs only: `ntd resume` starts QEMU machines.
                let m = m.as_vm()?;
                Some(CapsuleMachine {
                    name: m.name.clone(),
                    start_command: m.start_command.clone(),
                    saved,
                    vmgenid: m.vmgenid(),
                    allow_reboot: m.allow_reboot,
                })
            })
            .collect();
        let script = self
            .opts
            .test_script
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(c) = self.capsule.as_mut() {
            c.saved = Some(Capsule {
                reason,
                failed_at_ms: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                script,
                vlans: self.opts.vlans.clone(),
                machines,
            });
        }
        self.log.end(true);
    }

    /// Run the loop until the group is done; `None` if a signal or the time limit cut it
    /// short (its directories removed).
    fn run_capsule_group(&mut self, mut group: SaveGroup) -> Option<Vec<(usize, SaveOutcome)>> {
        let give_up = Instant::now() + CAPSULE_PATIENCE;
        let mut events = Events::with_capacity(64);
        loop {
            let mut cx = Ctx {
                registry: self.poll.registry(),
                log: &mut self.log,
            };
            let state = group.poll(
                &mut self.machines,
                &mut cx,
                CHECKSUM_STEP,
                self.trace.as_ref(),
            );
            if state == GroupState::Done {
                return Some(group.into_outcomes());
            }
            let signalled = matches!(self.termination, Some(Termination::Signal(_)));
            if signalled || Instant::now() >= give_up {
                if !signalled {
                    self.log
                        .warning(None, "the failure capsule took too long; none written");
                }
                group.abandon();
                return None;
            }
            let wait = if group.busy() { Duration::ZERO } else { TICK };
            self.poll_once(&mut events, Some(wait));
            self.member_timers(Instant::now());
        }
    }

    /// After cleanup: the log, the trace, the script and the description go into the
    /// capsule, and its size is printed; without a failure, nothing stays.
    pub(super) fn finish_capsule(&mut self) {
        let Some(cap) = self.capsule.take() else {
            return;
        };
        let Some(desc) = cap.saved else {
            let _ = std::fs::remove_dir_all(&cap.staging);
            if cap.created_dir {
                let _ = std::fs::remove_dir(&cap.dir);
            }
            return;
        };
        let mut problems = Vec::new();
        let mut copy = |from: &Path, name: &str| {
            if let Err(e) = std::fs::copy(from, cap.dir.join(name)) {
                problems.push(format!("{name}: {e}"));
            }
        };
        copy(&cap.staging.join(capsule::LOG), capsule::LOG);
        for t in &cap.trace_files {
            if let Some(name) = t.file_name().and_then(|n| n.to_str()) {
                copy(t, name);
            }
        }
        if let Some(script) = &self.opts.test_script {
            if !desc.script.is_empty() {
                copy(script, &desc.script);
            }
        }
        if let Some(tb) = &cap.traceback {
            use std::io::Write as _;
            let appended = std::fs::OpenOptions::new()
                .append(true)
                .open(cap.dir.join(capsule::LOG))
                .and_then(|mut f| write!(f, "the test script raised:\n{tb}"));
            if let Err(e) = appended {
                problems.push(format!("the traceback in {}: {e}", capsule::LOG));
            }
        }
        if let Err(e) = std::fs::write(cap.dir.join(capsule::FILE), desc.encode()) {
            problems.push(format!("{}: {e}", capsule::FILE));
        }
        let _ = std::fs::remove_dir_all(&cap.staging);
        let saved = desc.machines.iter().filter(|m| m.saved.is_ok()).count();
        // The log is closed: this goes to stderr only.
        eprintln!(
            "ntd: failure capsule written to {} ({:.1} MB on disk, {saved} of {} machines \
             saved); resume it with: ntd resume {}",
            cap.dir.display(),
            store::disk_usage(&cap.dir) as f64 / 1e6,
            desc.machines.len(),
            cap.dir.display()
        );
        for p in problems {
            eprintln!("ntd: the failure capsule lacks {p}");
        }
    }

    /// `ntd resume DIR`: every saved machine restores from the capsule when the run starts
    /// (with the vmgenid device and reboot setting it had).
    pub(super) fn setup_resume(&mut self) -> Result<(), String> {
        let Some(dir) = self.opts.resume.clone() else {
            return Ok(());
        };
        let desc = read_capsule(&dir)?;
        let mut lines = vec![format!(
            "resuming the failure capsule {}: {}",
            dir.display(),
            desc.reason
        )];
        for cm in &desc.machines {
            let Some(m) = self
                .machines
                .iter_mut()
                .filter_map(Node::as_vm_mut)
                .find(|m| m.name == cm.name)
            else {
                continue;
            };
            m.set_vmgenid(cm.vmgenid);
            m.allow_reboot = cm.allow_reboot;
            match &cm.saved {
                Err(why) => lines.push(format!("{}: not saved ({why}); boots normally", cm.name)),
                Ok(()) => {
                    let entry = dir.join(capsule::MACHINES).join(&cm.name);
                    let manifest = std::fs::read_to_string(entry.join(MANIFEST))
                        .map_err(|e| e.to_string())
                        .and_then(|t| Manifest::decode(&t))
                        .map_err(|e| format!("{}: {e}", entry.display()))?;
                    if let Some(p) = manifest.codec.program().filter(|p| !codec::on_path(p)) {
                        return Err(format!(
                            "machine '{}' was saved with {p}, which is not installed here",
                            cm.name
                        ));
                    }
                    lines.push(format!("{}: restoring", cm.name));
                    m.set_restore_plan(Some(RestorePlan {
                        entry,
                        manifest,
                        lock: None,
                        fallback: false,
                        replay_console: true,
                    }));
                }
            }
        }
        for l in lines {
            self.log.info(&l);
        }
        self.log.info(&format!(
            "the failed run's log is {}",
            dir.join(capsule::LOG).display()
        ));
        Ok(())
    }

    /// Start the machines a resume restores.
    pub(super) fn start_resumed(&mut self) {
        let mut cx = Ctx {
            registry: self.poll.registry(),
            log: &mut self.log,
        };
        for m in self.machines.iter_mut().filter_map(Node::as_vm_mut) {
            if m.has_restore_plan() {
                if let Err(e) = m.start(&mut cx, &self.extra_env) {
                    cx.log.error(&format!("{}: {e}", m.name));
                }
            }
        }
    }
}

/// The description of the capsule in `dir`.
pub fn read_capsule(dir: &Path) -> Result<Capsule, String> {
    let path = dir.join(capsule::FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: {e} (is it a failure capsule?)", path.display()))?;
    Capsule::decode(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Remove a previous capsule's files (DIR holds a capsule or nothing, checked at setup).
fn clear_capsule(dir: &Path) {
    if let Ok(d) = std::fs::read_dir(dir) {
        for e in d.flatten() {
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// Write the manifest into the saved entry and move it to `target`.
fn place_entry(tmp: &Path, manifest: &Manifest, target: &Path) -> std::io::Result<()> {
    std::fs::write(tmp.join(MANIFEST), manifest.encode())?;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::rename(tmp, target)
}
