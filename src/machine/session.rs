//! The conversation with one guest shell, without I/O: after the sentinel, nothing until the
//! first request (as upstream, which sends nothing before it: a booting guest's CPU goes to its
//! boot), which goes behind the setup block and its check; then one request at a time; after a
//! large frame, the check that the virtio console dropped nothing, and the repair from the
//! guest's spool when it did.
//!
//! Bytes from the shell socket go into [`ShellSession::feed`]; bytes for the guest come out of
//! [`ShellSession::take_outbox`]; what the machine should log or time comes out as
//! [`SessionNote`]s; a finished request as a [`ShellResult`]. The session knows the guest-side
//! spool (see [`super::guest::SETUP`]): every byte the framing consumed since the sentinel was
//! spooled too, except the pieces fetched again during a repair, so it can tell where each
//! frame starts in the spool without asking. It never touches a socket, never blocks and never
//! panics on what the guest sends.

use super::guest::{self, SetupPart, WaitSpec};
use super::shell::{self, NonceSource, ShellEvent, ShellFraming, NONCE_LEN};
use super::waits::GuestCheck;
use std::fmt;
use std::time::Duration;

/// Frames at least this large are checked for bytes the virtio console dropped (below the
/// socket buffer size nothing can be dropped).
pub const VERIFY_MIN_BYTES: u64 = 64 * 1024;
/// The guest's spool is emptied in front of the next command once it holds this much.
pub const SPOOL_LIMIT: u64 = 16 << 20;

/// What to run in the guest shell.
#[derive(Debug, Clone, PartialEq)]
pub enum ShellRequest {
    /// Run `command` once; after `timeout` the watchdog ends it with status 124.
    Run {
        command: String,
        timeout: Option<Duration>,
    },
    /// Run `check` repeatedly inside the guest until it holds, paced as `spec` says.
    /// (Boxed: both are large, and requests wait inside every pending op.)
    Wait {
        check: Box<GuestCheck>,
        spec: Box<WaitSpec>,
    },
}

impl ShellRequest {
    pub fn command(&self) -> &str {
        match self {
            ShellRequest::Run { command, .. } => command,
            ShellRequest::Wait { check, .. } => check.describe(),
        }
    }

    fn is_wait(&self) -> bool {
        matches!(self, ShellRequest::Wait { .. })
    }

    /// Whether the request runs under the guest's watchdog, so that the host ends it.
    pub fn watched(&self) -> bool {
        self.needs_timeouts()
    }

    fn needs_timeouts(&self) -> bool {
        matches!(
            self,
            ShellRequest::Run {
                timeout: Some(_),
                ..
            } | ShellRequest::Wait { .. }
        )
    }
}

/// The outcome of one [`ShellRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellResult {
    pub status: i32,
    pub output: Vec<u8>,
    /// Output bytes dropped beyond [`shell::MAX_OUTPUT`].
    pub truncated: usize,
    /// Failed attempts of a guest-side wait loop that forked (builtin-only attempts, such as
    /// a `/dev/tcp` connect, are not reported one by one).
    pub attempts: u32,
    /// False when a wait's `timeout` wrapper had to stop a hanging attempt.
    pub looped: bool,
    /// Bytes the guest wrote that never arrived (the virtio console dropped them).
    pub lost: u64,
}

/// Something the machine should log or time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionNote {
    /// Bytes the guest printed before the sentinel (upstream logs them as "Guest shell says").
    Greeting(Vec<u8>),
    /// The sentinel arrived: requests may be sent (the first one takes ntd's setup along).
    Sentinel,
    /// The setup check answered (the first request follows it).
    Ready,
    /// The setup check ended with a status that means failure (or never came: see
    /// [`ShellSession::fail_setup`]).
    SetupFailed { reason: String },
    /// The guest has no spool (no `/dev/fd` or no `tee`): dropped output cannot be detected.
    NoSpool,
    /// Output after its command finished (a background process that kept stdout).
    Stray(Vec<u8>),
    /// `command` ended 10 s ago, but these guest processes still hold its stdout, so the
    /// request waits for them (`report`: `<pid> <command line>` lines from the guest).
    StdoutHeld { command: String, report: Vec<u8> },
    /// A wait attempt that forked failed: its status, the CPU the loop charged it and the
    /// pause it chose before the next one (logged at debug level: the pacing decisions).
    Attempt {
        attempt: u32,
        status: i32,
        cost_us: u64,
        pause_us: u64,
    },
    /// A failed attempt of a wait printed this (kept out of the result, logged at debug level).
    AttemptOutput {
        attempt: u32,
        status: i32,
        output: Vec<u8>,
    },
    /// The console dropped this many bytes of the last frame; they are being fetched again.
    Dropped { bytes: u64 },
    /// The full output (this many bytes) was recovered from the spool.
    Recovered { bytes: usize },
}

/// Why a request cannot be submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    NotConnected,
    Busy,
    Encode(guest::EncodeError),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::NotConnected => write!(f, "the guest shell is not connected"),
            SessionError::Busy => write!(f, "the guest shell is still running a command"),
            SessionError::Encode(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SessionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SessionError::Encode(e) => Some(e),
            SessionError::NotConnected | SessionError::Busy => None,
        }
    }
}

/// What the host must remember of an idle guest shell to talk to it again after the machine
/// was saved and restored (the guest keeps its half: the setup's functions, its spool).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedSession {
    /// Bytes in the guest's spool.
    pub spool_used: u64,
    pub spool: bool,
    pub sent_timeouts: bool,
    pub sent_waits: bool,
}

/// Where the session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// No connection, or no sentinel yet.
    Booting,
    /// The sentinel arrived; nothing sent yet (ntd's setup goes with the first request).
    Connected,
    /// Setup sent with a request waiting behind it; waiting for the setup's check frame.
    Setup,
    /// Ready for requests.
    Ready,
    /// Running a user request.
    Busy,
    /// The request finished; checking that none of its output was dropped (and fetching it
    /// again from the guest's spool if some was).
    Verifying,
    /// A request was abandoned (no answer in time); the shell is usable again once its frame
    /// ends.
    Stuck,
}

/// A finished request being checked for output the console dropped.
#[derive(Debug)]
struct Unverified {
    result: ShellResult,
    /// Bytes of the frame that arrived (end marker included).
    frame_bytes: u64,
    /// Bytes the guest spooled for the frame (known once the count came back).
    spooled: u64,
    /// Pieces fetched again so far.
    spool: Vec<u8>,
    pieces: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct ShellSession {
    framing: ShellFraming,
    stage: Stage,
    nonces: NonceSource,
    outbox: Vec<u8>,
    attempts: u32,
    result: Option<ShellResult>,
    unverified: Option<Unverified>,
    /// Nonce, kind and command of the request in flight.
    request_nonce: [u8; NONCE_LEN],
    request_command: String,
    request_is_wait: bool,
    /// The request in flight runs under the guest's watchdog (a timed command, a wait): the
    /// host may tell it things ([`Self::tell`]) and releases the watchdog after its end.
    request_watched: bool,
    /// The first request of a new shell, sent once the setup it waits behind answered.
    pending: Option<ShellRequest>,
    /// `framing.consumed()` when the spool was last emptied.
    spool_base: u64,
    /// Bytes consumed by fetch frames since `spool_base` (they bypass the spool).
    spool_fetched: u64,
    /// Offset in the spool where the request in flight started.
    request_spool_offset: u64,
    /// Whether this shell has the timeout and wait machinery yet.
    sent_timeouts: bool,
    sent_waits: bool,
    /// The connection ended (EOF) since the last sentinel.
    lost: bool,
    /// Whether the guest spools command output (see [`guest::SETUP`]).
    spool: bool,
    /// Why the shell cannot be used (its setup failed, or it stopped answering), until the
    /// next sentinel or the late end of the abandoned request.
    unusable: Option<String>,
}

impl ShellSession {
    pub fn new(nonces: NonceSource) -> Self {
        ShellSession {
            framing: ShellFraming::new(),
            stage: Stage::Booting,
            nonces,
            outbox: Vec::new(),
            attempts: 0,
            result: None,
            unverified: None,
            request_nonce: [b'0'; NONCE_LEN],
            request_command: String::new(),
            request_is_wait: false,
            request_watched: false,
            pending: None,
            spool_base: 0,
            spool_fetched: 0,
            request_spool_offset: 0,
            sent_timeouts: false,
            sent_waits: false,
            lost: false,
            spool: true,
            unusable: None,
        }
    }

    /// A new connection (or the old one after a reboot): wait for a fresh sentinel.
    pub fn restart(&mut self) {
        self.framing.await_sentinel();
        self.stage = Stage::Booting;
        self.request_watched = false;
        self.pending = None;
        self.outbox.clear();
        self.result = None;
        self.unverified = None;
        self.lost = false;
        self.unusable = None;
    }

    /// Forget the shell without a new connection (reboot, `switch_root`): the next request
    /// waits for the sentinel again.
    pub fn await_sentinel(&mut self) {
        self.framing.await_sentinel();
        self.stage = Stage::Booting;
        self.request_watched = false;
        self.pending = None;
        self.unusable = None;
    }

    /// True while the setup block has been sent but not answered (the machine times it).
    pub fn in_setup(&self) -> bool {
        self.stage == Stage::Setup
    }

    /// The state to save, if the shell is idle and ready.
    pub fn saved(&self) -> Option<SavedSession> {
        (self.stage == Stage::Ready && self.unusable.is_none()).then(|| SavedSession {
            spool_used: self.framing.consumed() - self.spool_base - self.spool_fetched,
            spool: self.spool,
            sent_timeouts: self.sent_timeouts,
            sent_waits: self.sent_waits,
        })
    }

    /// Talk again to a shell saved as `saved` (a restored machine): ready at once, no
    /// sentinel and no setup.
    pub fn resume(&mut self, saved: SavedSession) {
        self.framing = ShellFraming::resumed(saved.spool_used);
        self.spool_base = 0;
        self.spool_fetched = 0;
        self.spool = saved.spool;
        self.sent_timeouts = saved.sent_timeouts;
        self.sent_waits = saved.sent_waits;
        self.stage = Stage::Ready;
        self.outbox.clear();
        self.result = None;
        self.unverified = None;
        self.lost = false;
        self.unusable = None;
    }

    /// Give up on a setup that never answered (the machine's timer): requests fail with
    /// `reason` until the next sentinel.
    pub fn fail_setup(&mut self, reason: String, notes: &mut Vec<SessionNote>) {
        if self.stage == Stage::Setup {
            self.stage = Stage::Booting;
            self.pending = None;
            self.unusable = Some(reason.clone());
            notes.push(SessionNote::SetupFailed { reason });
        }
    }

    /// Give up on the request in flight (the guest stopped answering): requests fail with
    /// `reason` until the shell answers again (the abandoned frame ends late) or a new
    /// sentinel comes.
    pub fn abandon(&mut self, reason: String) {
        if self.stage == Stage::Setup {
            // The request never left: the setup may still answer, and then nothing follows.
            self.pending = None;
            return;
        }
        if matches!(self.stage, Stage::Busy | Stage::Verifying) {
            self.stage = Stage::Stuck;
            self.unverified = None;
            self.unusable = Some(reason);
        }
    }

    /// Why the shell cannot be used (its setup failed, or it stopped answering), if so.
    pub fn unusable(&self) -> Option<&str> {
        self.unusable.as_deref()
    }

    /// The connection is gone (EOF or error).
    pub fn connection_lost(&mut self) {
        self.stage = Stage::Booting;
        self.request_watched = false;
        self.pending = None;
        self.outbox.clear();
        self.lost = true;
    }

    /// Upstream's `connected`: the backdoor shell printed its sentinel (and, when ntd's
    /// setup was sent, answered it).
    pub fn connected(&self) -> bool {
        matches!(
            self.stage,
            Stage::Connected | Stage::Setup | Stage::Ready | Stage::Busy | Stage::Verifying
        )
    }

    /// Ready for a request now.
    pub fn ready(&self) -> bool {
        matches!(self.stage, Stage::Connected | Stage::Ready)
    }

    /// True while the connection is gone.
    pub fn lost(&self) -> bool {
        self.lost
    }

    /// Bytes to write to the guest.
    pub fn take_outbox(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outbox)
    }

    /// The result of the request in flight, once complete (and verified).
    pub fn take_result(&mut self) -> Option<ShellResult> {
        self.result.take()
    }

    /// Feed bytes read from the shell socket.
    pub fn feed(&mut self, data: &[u8], notes: &mut Vec<SessionNote>) {
        let mut events = Vec::new();
        self.framing.feed(data, &mut events);
        for ev in events {
            self.event(ev, notes);
        }
    }

    /// Send a request; its result comes from [`Self::take_result`]. The first request of a
    /// new shell goes behind ntd's setup (sent now, the request once it answered).
    pub fn submit(&mut self, req: &ShellRequest) -> Result<(), SessionError> {
        match self.stage {
            Stage::Ready => {}
            Stage::Connected => {
                // Refuse what cannot be encoded now, not after the setup.
                encode(&[b'0'; NONCE_LEN], req).map_err(SessionError::Encode)?;
                self.pending = Some(req.clone());
                self.send_setup();
                return Ok(());
            }
            Stage::Setup | Stage::Busy | Stage::Verifying => return Err(SessionError::Busy),
            Stage::Booting | Stage::Stuck => return Err(SessionError::NotConnected),
        }
        self.send(req)
    }

    /// Write `req` to the guest (the shell is set up and idle).
    fn send(&mut self, req: &ShellRequest) -> Result<(), SessionError> {
        let nonce = self.nonces.next_nonce();
        let mut line = encode(&nonce, req).map_err(SessionError::Encode)?;
        if req.is_wait() && !self.sent_waits {
            line.insert_str(0, guest::setup_text(SetupPart::Waits));
            self.sent_waits = true;
        }
        if req.needs_timeouts() && !self.sent_timeouts {
            line.insert_str(0, guest::setup_text(SetupPart::Timeouts));
            self.sent_timeouts = true;
        }
        let consumed = self.framing.consumed();
        if consumed - self.spool_base - self.spool_fetched > SPOOL_LIMIT {
            line.insert_str(0, guest::TRUNCATE_SPOOL);
            self.spool_base = consumed;
            self.spool_fetched = 0;
        }
        self.request_spool_offset = consumed - self.spool_base - self.spool_fetched;
        self.framing.expect(nonce);
        self.request_nonce = nonce;
        self.request_is_wait = req.is_wait();
        req.command().clone_into(&mut self.request_command);
        self.request_watched = req.watched();
        self.attempts = 0;
        self.result = None;
        self.stage = Stage::Busy;
        self.outbox.extend_from_slice(line.as_bytes());
        Ok(())
    }

    fn event(&mut self, ev: ShellEvent, notes: &mut Vec<SessionNote>) {
        match ev {
            ShellEvent::Greeting(bytes) => notes.push(SessionNote::Greeting(bytes)),
            ShellEvent::Connected => {
                notes.push(SessionNote::Sentinel);
                self.new_shell();
            }
            ShellEvent::Stray(bytes) => notes.push(SessionNote::Stray(bytes)),
            ShellEvent::Held { report } => notes.push(SessionNote::StdoutHeld {
                command: self.request_command.clone(),
                report,
            }),
            ShellEvent::Attempt {
                status,
                output,
                cost_us,
                pause_us,
            } => {
                self.attempts += 1;
                notes.push(SessionNote::Attempt {
                    attempt: self.attempts,
                    status,
                    cost_us,
                    pause_us,
                });
                if !output.is_empty() {
                    notes.push(SessionNote::AttemptOutput {
                        attempt: self.attempts,
                        status,
                        output,
                    });
                }
            }
            ShellEvent::Count { spooled } => self.check_spool_count(spooled, notes),
            ShellEvent::Done {
                status,
                output,
                truncated,
                looped,
                frame_bytes,
            } => match self.stage {
                Stage::Setup if status == 0 || status == guest::SETUP_NO_SPOOL => {
                    self.spool = status == 0;
                    if !self.spool {
                        notes.push(SessionNote::NoSpool);
                    }
                    self.stage = Stage::Ready;
                    notes.push(SessionNote::Ready);
                    if let Some(req) = self.pending.take() {
                        if let Err(e) = self.send(&req) {
                            // Checked when submitted: encoding does not depend on the nonce.
                            self.unusable =
                                Some(format!("ntd could not encode `{}`: {e}", req.command()));
                        }
                    }
                }
                Stage::Setup => {
                    let reason = format!(
                        "ntd's setup of the guest shell ended with status {status} (output: {})",
                        crate::log::py_bytes_repr(&output)
                    );
                    self.stage = Stage::Booting;
                    self.pending = None;
                    self.unusable = Some(reason.clone());
                    notes.push(SessionNote::SetupFailed { reason });
                }
                Stage::Verifying => {
                    self.spool_fetched += frame_bytes;
                    self.spool_piece(output, notes)
                }
                Stage::Stuck => {
                    // The abandoned request ended after all: the shell answers again.
                    self.release();
                    self.stage = Stage::Ready;
                    self.unusable = None;
                }
                _ => {
                    self.release();
                    let result = ShellResult {
                        status,
                        output,
                        truncated,
                        attempts: std::mem::take(&mut self.attempts),
                        looped,
                        lost: 0,
                    };
                    self.finish(result, frame_bytes);
                }
            },
        }
    }

    /// Tell the request in flight something (pace, stop, kill); false when no watched
    /// request runs (it ended, or it is not under the watchdog).
    pub fn tell(&mut self, m: guest::HostMessage) -> bool {
        if !(self.request_watched && matches!(self.stage, Stage::Busy | Stage::Stuck)) {
            return false;
        }
        self.outbox.extend_from_slice(m.bytes());
        true
    }

    /// The watched request's end marker arrived: release the guest's watchdog, before
    /// anything else is sent (see [`guest::SETUP_TIMEOUTS`]).
    fn release(&mut self) {
        if std::mem::take(&mut self.request_watched) {
            self.outbox.push(guest::HostMessage::RELEASE);
        }
    }

    /// A new shell: a new, empty spool; the framing counts from the sentinel on. Nothing is
    /// sent until the first request.
    fn new_shell(&mut self) {
        self.spool_base = 0;
        self.spool_fetched = 0;
        self.sent_timeouts = false;
        self.sent_waits = false;
        self.lost = false;
        self.unusable = None;
        self.pending = None;
        self.stage = Stage::Connected;
    }

    /// The setup block, and an internal check frame that proves it works before the first
    /// request is sent.
    fn send_setup(&mut self) {
        let nonce = self.nonces.next_nonce();
        let mut setup = guest::setup_text(SetupPart::Base).to_owned();
        setup.push_str(&guest::encode_run(&nonce, guest::SETUP_CHECK, None).unwrap_or_default());
        self.framing.expect(nonce);
        self.stage = Stage::Setup;
        self.outbox.extend_from_slice(setup.as_bytes());
    }

    /// A request's frame ended: small frames are complete; large ones are checked first.
    fn finish(&mut self, result: ShellResult, frame_bytes: u64) {
        if frame_bytes < VERIFY_MIN_BYTES || !self.spool {
            self.stage = Stage::Ready;
            self.result = Some(result);
            return;
        }
        let nonce = self.nonces.next_nonce();
        self.framing.expect_count(nonce);
        self.unverified = Some(Unverified {
            result,
            frame_bytes,
            spooled: 0,
            spool: Vec::new(),
            pieces: 0,
        });
        self.stage = Stage::Verifying;
        self.outbox
            .extend_from_slice(guest::encode_count(&nonce).as_bytes());
    }

    fn deliver(&mut self, result: ShellResult) {
        self.stage = Stage::Ready;
        self.result = Some(result);
    }

    /// The guest says how large its spool is: the frame's share of it equal to (or unknown,
    /// or smaller than) what arrived means nothing was dropped; larger means the console
    /// dropped bytes, which are then fetched again piece by piece.
    fn check_spool_count(&mut self, spooled: i64, notes: &mut Vec<SessionNote>) {
        let Some(mut u) = self.unverified.take() else {
            self.stage = Stage::Ready;
            self.unusable = None;
            return;
        };
        // The spool holds this frame from request_spool_offset on (the count's own marker is
        // written after the size was taken).
        let frame_spooled = u64::try_from(spooled)
            .unwrap_or(0)
            .saturating_sub(self.request_spool_offset);
        if spooled < 0 || frame_spooled <= u.frame_bytes {
            return self.deliver(u.result);
        }
        u.spooled = frame_spooled;
        if self.request_is_wait {
            // A wait's frame holds every attempt; only its last output matters and it is small.
            u.result.lost = u.spooled - u.frame_bytes;
            return self.deliver(u.result);
        }
        notes.push(SessionNote::Dropped {
            bytes: u.spooled - u.frame_bytes,
        });
        self.unverified = Some(u);
        self.fetch_next_piece();
    }

    fn fetch_next_piece(&mut self) {
        let Some(u) = self.unverified.as_mut() else {
            return;
        };
        let nonce = self.nonces.next_nonce();
        let start = (u.pieces == 0).then_some(self.request_spool_offset);
        let line = guest::encode_fetch(&nonce, start, guest::FETCH_PIECE);
        u.pieces += 1;
        self.framing.expect(nonce);
        self.outbox.extend_from_slice(line.as_bytes());
    }

    /// One piece of the spool arrived; the last one is short.
    fn spool_piece(&mut self, piece: Vec<u8>, notes: &mut Vec<SessionNote>) {
        let Some(mut u) = self.unverified.take() else {
            self.stage = Stage::Ready;
            return;
        };
        let last = piece.len() < guest::FETCH_PIECE || u.spool.len() as u64 >= u.spooled;
        u.spool.extend_from_slice(&piece);
        if !last {
            self.unverified = Some(u);
            self.fetch_next_piece();
            return;
        }
        self.outbox.extend_from_slice(guest::FETCH_DONE.as_bytes());
        match shell::parse_spool(&u.spool, &self.request_nonce) {
            Some((len, _status)) => {
                u.spool.truncate(len);
                let keep = len.min(shell::MAX_OUTPUT);
                u.result.truncated = len - keep;
                u.spool.truncate(keep);
                u.result.output = u.spool;
                notes.push(SessionNote::Recovered { bytes: len });
            }
            None => u.result.lost = u.spooled - u.frame_bytes,
        }
        self.deliver(u.result);
    }
}

/// The one line that runs `req` in the guest, framed with `nonce`.
fn encode(nonce: &[u8; NONCE_LEN], req: &ShellRequest) -> Result<String, guest::EncodeError> {
    match req {
        ShellRequest::Run { command, timeout } => guest::encode_run(nonce, command, *timeout),
        ShellRequest::Wait { check, spec } => guest::encode_wait(nonce, check, **spec),
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
