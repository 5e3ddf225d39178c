//! The end of a run's report: the trace file and its timeline page, the driver's own cost
//! (run time, peak RSS, CPU) and each machine's boot phases or container start time.

use super::node::Node;
use super::Driver;
use crate::log::LineKind;

impl Driver {
    /// Each VM's boot milestones not yet in the trace.
    pub(super) fn trace_milestones(&mut self) {
        if let Some(t) = &self.trace {
            for m in &mut self.machines {
                if let Node::Vm(m) = m {
                    for &(at, what) in m.boot.untraced() {
                        t.instant(&m.name, what.name(), at);
                    }
                }
            }
        }
    }

    /// Write the trace and its timeline page, and say where (unless only a failure capsule
    /// wanted them).
    pub(super) fn write_trace(&mut self) {
        let Some(t) = self.trace.take() else {
            return;
        };
        let written = t.write();
        if let Ok(html) = &written {
            self.note_trace_files(vec![t.path().to_path_buf(), html.clone()]);
        }
        if self.trace_for_capsule_only() {
            return;
        }
        match written {
            Ok(html) => self.log.info(&format!(
                "trace written to {} (timeline: {})",
                t.path().display(),
                html.display()
            )),
            Err(e) => self.log.warning(
                None,
                &format!("cannot write the trace to {}: {e}", t.path().display()),
            ),
        }
    }

    /// The driver's own cost and each machine's boot phases: at debug level, or always when
    /// a trace is recorded.
    pub(super) fn report_usage(&mut self) {
        self.trace_milestones();
        let line = format!(
            "driver ran for {:.2} s; its own peak RSS {} KiB, CPU {:.3} s \
             (QEMU and Python not included)",
            self.started.elapsed().as_secs_f64(),
            crate::procinfo::peak_rss_kib().unwrap_or(0),
            crate::procinfo::cpu_seconds().unwrap_or(0.0)
        );
        let kind = if self.trace.is_some() {
            LineKind::Log
        } else {
            LineKind::Debug
        };
        self.log.line(kind, None, &line);
        for m in &self.machines {
            match m {
                Node::Vm(m) => {
                    if let Some(phases) = m.boot.phases() {
                        self.log.line(kind, Some(&m.name), &phases);
                    }
                }
                Node::Container(c) => {
                    if let (Some(a), Some(b)) = (c.started_at, c.ready_at) {
                        let line = format!(
                            "container ready {:.2} s after its start script ran",
                            b.saturating_duration_since(a).as_secs_f64()
                        );
                        self.log.line(kind, Some(&c.name), &line);
                    }
                }
            }
        }
    }
}
