//! The conversation with one guest shell, without I/O: after the sentinel, the setup block and
//! its check; then one request at a time; after a large frame, the check that the virtio
//! console dropped nothing, and the repair from the guest's spool when it did.
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

/// Frames at least this large are checked for bytes the virtio console dropped (below the
/// socket buffer size nothing can be dropped).
pub const VERIFY_MIN_BYTES: u64 = 64 * 1024;
/// The guest's spool is emptied in front of the next command once it holds this much.
pub const SPOOL_LIMIT: u64 = 16 << 20;

/// What to run in the guest shell.
#[derive(Debug, Clone, PartialEq)]
pub enum ShellRequest {
    /// Run `command` once; `timeout` in seconds (the watchdog ends it with status 124).
    Run {
        command: String,
        timeout: Option<f64>,
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
    /// The sentinel arrived; the setup block has been queued.
    Sentinel,
    /// The setup check answered: commands may be sent.
    Ready,
    /// The setup check ended with a status that means failure (or never came: see
    /// [`ShellSession::fail_setup`]).
    SetupFailed { reason: String },
    /// The guest has no spool (no `/dev/fd` or no `tee`): dropped output cannot be detected.
    NoSpool,
    /// Output after its command finished (a background process that kept stdout).
    Stray(Vec<u8>),
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

impl std::error::Error for SessionError {}

/// Where the session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// No connection, or no sentinel yet.
    Booting,
    /// Setup sent; waiting for its check frame.
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
    /// Nonce and kind of the request in flight.
    request_nonce: [u8; NONCE_LEN],
    request_is_wait: bool,
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
            request_is_wait: false,
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
        self.unusable = None;
    }

    /// True while the setup block has been sent but not answered.
    #[cfg(test)]
    pub fn in_setup(&self) -> bool {
        self.stage == Stage::Setup
    }

    /// Give up on a setup that never answered (the machine's timer): requests fail with
    /// `reason` until the next sentinel.
    pub fn fail_setup(&mut self, reason: String, notes: &mut Vec<SessionNote>) {
        if self.stage == Stage::Setup {
            self.stage = Stage::Booting;
            self.unusable = Some(reason.clone());
            notes.push(SessionNote::SetupFailed { reason });
        }
    }

    /// Give up on the request in flight (the guest stopped answering): requests fail with
    /// `reason` until the shell answers again (the abandoned frame ends late) or a new
    /// sentinel comes.
    pub fn abandon(&mut self, reason: String) {
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
        self.outbox.clear();
        self.lost = true;
    }

    /// Upstream's `connected`: the backdoor shell answered its setup.
    pub fn connected(&self) -> bool {
        matches!(self.stage, Stage::Ready | Stage::Busy | Stage::Verifying)
    }

    /// Ready for a request now.
    pub fn ready(&self) -> bool {
        self.stage == Stage::Ready
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

    /// Send a request; its result comes from [`Self::take_result`].
    pub fn submit(&mut self, req: &ShellRequest) -> Result<(), SessionError> {
        match self.stage {
            Stage::Ready => {}
            Stage::Busy | Stage::Verifying => return Err(SessionError::Busy),
            Stage::Booting | Stage::Setup | Stage::Stuck => return Err(SessionError::NotConnected),
        }
        let nonce = self.nonces.next_nonce();
        let mut line = match req {
            ShellRequest::Run { command, timeout } => guest::encode_run(&nonce, command, *timeout),
            ShellRequest::Wait { check, spec } => guest::encode_wait(&nonce, check, **spec),
        }
        .map_err(SessionError::Encode)?;
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
                self.send_setup();
            }
            ShellEvent::Stray(bytes) => notes.push(SessionNote::Stray(bytes)),
            ShellEvent::Attempt { status, output } => {
                self.attempts += 1;
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
                }
                Stage::Setup => {
                    let reason = format!(
                        "ntd's setup of the guest shell ended with status {status} (output: {})",
                        crate::log::py_bytes_repr(&output)
                    );
                    self.stage = Stage::Booting;
                    self.unusable = Some(reason.clone());
                    notes.push(SessionNote::SetupFailed { reason });
                }
                Stage::Verifying => {
                    self.spool_fetched += frame_bytes;
                    self.spool_piece(output, notes)
                }
                Stage::Stuck => {
                    // The abandoned request ended after all: the shell answers again.
                    self.stage = Stage::Ready;
                    self.unusable = None;
                }
                _ => {
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

    /// A new shell: a new, empty spool; the framing counts from the sentinel on. An internal
    /// check frame proves the setup works before any user command.
    fn send_setup(&mut self) {
        self.spool_base = 0;
        self.spool_fetched = 0;
        self.sent_timeouts = false;
        self.sent_waits = false;
        self.lost = false;
        self.unusable = None;
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

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: u64 = 0x5eed;

    /// A session and a twin nonce source that predicts its nonces.
    fn session() -> (ShellSession, NonceSource) {
        (
            ShellSession::new(NonceSource::from_seed(SEED)),
            NonceSource::from_seed(SEED),
        )
    }

    fn marker(kind: char, nonce: &[u8; NONCE_LEN], n: i64) -> Vec<u8> {
        format!("\x01{kind}{} {n}\x01", std::str::from_utf8(nonce).unwrap()).into_bytes()
    }

    fn frame(body: &[u8], nonce: &[u8; NONCE_LEN], status: i32) -> Vec<u8> {
        let mut v = body.to_vec();
        v.extend_from_slice(&marker('E', nonce, status.into()));
        v
    }

    /// Boot to Ready: sentinel, setup, check frame.
    fn ready() -> (ShellSession, NonceSource) {
        let (mut s, mut twin) = session();
        let mut notes = Vec::new();
        s.feed(b"booting...\nSpawning backdoor root shell...\n", &mut notes);
        let setup = String::from_utf8(s.take_outbox()).unwrap();
        assert!(setup.starts_with(guest::setup_text(SetupPart::Base)));
        let check = twin.next_nonce();
        s.feed(&frame(b"", &check, 0), &mut notes);
        assert_eq!(
            notes,
            vec![
                SessionNote::Greeting(b"booting...\nSpawning backdoor root shell...\n".to_vec()),
                SessionNote::Sentinel,
                SessionNote::Ready
            ]
        );
        assert!(s.ready() && s.connected());
        (s, twin)
    }

    fn run(cmd: &str) -> ShellRequest {
        ShellRequest::Run {
            command: cmd.into(),
            timeout: None,
        }
    }

    fn wait_request(command: &str) -> ShellRequest {
        use super::super::waits::{Pacing, Schedule};
        ShellRequest::Wait {
            check: Box::new(GuestCheck {
                guard: String::new(),
                command: command.into(),
                until_success: true,
                fatal_status: 0,
                watch: None,
            }),
            spec: Box::new(WaitSpec {
                budget_secs: 1.0,
                pacing: Pacing::new(Schedule::Budget, std::time::Duration::ZERO),
            }),
        }
    }

    #[test]
    fn submit_before_sentinel_is_not_connected() {
        let (mut s, _) = session();
        assert_eq!(s.submit(&run("true")), Err(SessionError::NotConnected));
        assert!(s.take_outbox().is_empty());
    }

    #[test]
    fn setup_check_failure_is_reported_and_not_ready() {
        let (mut s, mut twin) = session();
        let mut notes = Vec::new();
        s.feed(b"Spawning backdoor root shell...\n", &mut notes);
        s.feed(&frame(b"oops", &twin.next_nonce(), 1), &mut notes);
        assert!(
            matches!(notes.last(), Some(SessionNote::SetupFailed { reason }) if reason.contains("status 1") && reason.contains("oops")),
            "{notes:?}"
        );
        assert!(!s.connected());
        assert!(s.unusable().is_some());
        assert_eq!(s.submit(&run("true")), Err(SessionError::NotConnected));
    }

    #[test]
    fn setup_that_never_answers_fails_when_the_machine_gives_up() {
        let (mut s, _) = session();
        let mut notes = Vec::new();
        s.feed(b"Spawning backdoor root shell...\n", &mut notes);
        assert!(s.in_setup());
        s.fail_setup("no answer".into(), &mut notes);
        assert_eq!(s.unusable(), Some("no answer"));
        assert!(!s.in_setup() && !s.connected());
        s.restart();
        assert_eq!(s.unusable(), None);
    }

    #[test]
    fn abandoned_request_makes_the_shell_unusable_until_its_frame_ends() {
        let (mut s, mut twin) = ready();
        s.submit(&run("hang")).unwrap();
        s.take_outbox();
        let n = twin.next_nonce();
        s.abandon("no answer".into());
        assert_eq!(s.unusable(), Some("no answer"));
        assert_eq!(s.submit(&run("true")), Err(SessionError::NotConnected));
        let mut notes = Vec::new();
        s.feed(&frame(b"late", &n, 0), &mut notes);
        assert!(s.ready() && s.unusable().is_none());
        assert!(
            s.take_result().is_none(),
            "nobody waits for the abandoned result"
        );
    }

    #[test]
    fn guest_without_spool_skips_the_output_check() {
        let (mut s, mut twin) = session();
        let mut notes = Vec::new();
        s.feed(b"Spawning backdoor root shell...\n", &mut notes);
        s.feed(&frame(b"", &twin.next_nonce(), 3), &mut notes);
        assert!(notes.contains(&SessionNote::NoSpool) && s.ready());
        s.submit(&run("big")).unwrap();
        s.take_outbox();
        let body = vec![b'q'; 2 * VERIFY_MIN_BYTES as usize];
        s.feed(&frame(&body, &twin.next_nonce(), 0), &mut notes);
        assert!(
            s.take_outbox().is_empty(),
            "no count request without a spool"
        );
        assert_eq!(s.take_result().unwrap().output, body);
    }

    #[test]
    fn run_request_is_one_line_and_its_frame_is_the_result() {
        let (mut s, mut twin) = ready();
        s.submit(&run("echo hi")).unwrap();
        let n = twin.next_nonce();
        assert_eq!(
            s.take_outbox(),
            guest::encode_run(&n, "echo hi", None).unwrap().into_bytes()
        );
        assert_eq!(s.submit(&run("true")), Err(SessionError::Busy));
        let mut notes = Vec::new();
        s.feed(&frame(b"hi\n", &n, 0), &mut notes);
        assert!(notes.is_empty());
        let r = s.take_result().unwrap();
        assert_eq!(
            (r.status, r.output.as_slice(), r.lost),
            (0, &b"hi\n"[..], 0)
        );
        assert!(s.ready());
    }

    #[test]
    fn first_timed_run_and_first_wait_carry_their_setup_once() {
        let (mut s, mut twin) = ready();
        let timed = ShellRequest::Run {
            command: "true".into(),
            timeout: Some(900.0),
        };
        s.submit(&timed).unwrap();
        let out = String::from_utf8(s.take_outbox()).unwrap();
        assert!(out.starts_with(guest::setup_text(SetupPart::Timeouts)));
        let mut notes = Vec::new();
        s.feed(&frame(b"", &twin.next_nonce(), 0), &mut notes);
        s.take_result().unwrap();
        s.submit(&timed).unwrap();
        let out = String::from_utf8(s.take_outbox()).unwrap();
        assert!(!out.contains(guest::setup_text(SetupPart::Timeouts)));
        s.feed(&frame(b"", &twin.next_nonce(), 0), &mut notes);
        s.take_result().unwrap();
        let wait = wait_request("test -e /x");
        s.submit(&wait).unwrap();
        let out = String::from_utf8(s.take_outbox()).unwrap();
        assert!(out.starts_with(guest::setup_text(SetupPart::Waits)));
        let n = twin.next_nonce();
        let mut data = marker('A', &n, 1);
        data.extend(marker('A', &n, 1));
        data.extend(marker('D', &n, 0));
        data.extend(marker('E', &n, 0));
        s.feed(&data, &mut notes);
        let r = s.take_result().unwrap();
        assert_eq!((r.status, r.attempts, r.looped), (0, 2, true));
    }

    #[test]
    fn large_frame_with_nothing_dropped_is_delivered_after_the_count() {
        let (mut s, mut twin) = ready();
        s.submit(&run("big")).unwrap();
        s.take_outbox();
        let n = twin.next_nonce();
        let body = vec![b'x'; VERIFY_MIN_BYTES as usize];
        let data = frame(&body, &n, 0);
        let mut notes = Vec::new();
        s.feed(&data, &mut notes);
        assert!(s.take_result().is_none(), "not before the count");
        let c = twin.next_nonce();
        assert_eq!(s.take_outbox(), guest::encode_count(&c).into_bytes());
        // The guest spooled the setup check frame, then this frame.
        let check_frame = frame(b"", &[b'0'; NONCE_LEN], 0).len() as i64;
        s.feed(
            &marker('C', &c, check_frame + data.len() as i64),
            &mut notes,
        );
        let r = s.take_result().unwrap();
        assert_eq!((r.output.len(), r.lost), (body.len(), 0));
        assert!(notes.is_empty());
    }

    #[test]
    fn dropped_output_is_fetched_again_in_pieces_and_recovered_byte_exact() {
        let (mut s, mut twin) = ready();
        s.submit(&run("big")).unwrap();
        s.take_outbox();
        let n = twin.next_nonce();
        let body: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let full = frame(&body, &n, 3);
        // The console dropped 70,000 bytes in the middle.
        let mut arrived = full[..50_000].to_vec();
        arrived.extend_from_slice(&full[120_000..]);
        let mut notes = Vec::new();
        s.feed(&arrived, &mut notes);
        let c = twin.next_nonce();
        assert_eq!(s.take_outbox(), guest::encode_count(&c).into_bytes());
        let check_len = frame(b"", &[b'0'; NONCE_LEN], 0).len();
        s.feed(
            &marker('C', &c, (check_len + full.len()) as i64),
            &mut notes,
        );
        assert_eq!(notes, vec![SessionNote::Dropped { bytes: 70_000 }]);
        // The guest answers each fetch with the next piece of its spool, from the frame start.
        let mut offset = 0;
        let mut first = true;
        loop {
            let f = twin.next_nonce();
            let start = first.then_some(check_len as u64);
            first = false;
            assert_eq!(
                s.take_outbox(),
                guest::encode_fetch(&f, start, guest::FETCH_PIECE).into_bytes()
            );
            let end = (offset + guest::FETCH_PIECE).min(full.len());
            s.feed(&frame(&full[offset..end], &f, 0), &mut notes);
            offset = end;
            if let Some(r) = s.take_result() {
                assert_eq!(r.status, 3, "the status of the frame that arrived");
                assert_eq!(r.output, body);
                assert_eq!(r.lost, 0);
                break;
            }
            assert!(offset < full.len() + guest::FETCH_PIECE, "runaway fetch");
        }
        assert_eq!(s.take_outbox(), guest::FETCH_DONE.as_bytes());
        assert_eq!(
            notes.last(),
            Some(&SessionNote::Recovered { bytes: body.len() })
        );
        assert!(s.ready());
    }

    #[test]
    fn dropped_output_of_a_wait_is_reported_as_lost() {
        let (mut s, mut twin) = ready();
        let wait = wait_request("noisy");
        s.submit(&wait).unwrap();
        s.take_outbox();
        let n = twin.next_nonce();
        let mut data = vec![b'y'; 100_000];
        data.extend(marker('D', &n, 0));
        data.extend(marker('E', &n, 0));
        let mut notes = Vec::new();
        s.feed(&data, &mut notes);
        let c = twin.next_nonce();
        s.take_outbox();
        let check_len = frame(b"", &[b'0'; NONCE_LEN], 0).len();
        s.feed(
            &marker('C', &c, (check_len + data.len() + 500) as i64),
            &mut notes,
        );
        let r = s.take_result().unwrap();
        assert_eq!(r.lost, 500);
    }

    #[test]
    fn spool_is_truncated_in_front_of_a_command_once_over_the_limit() {
        let (mut s, mut twin) = ready();
        let mut notes = Vec::new();
        let body = vec![b'z'; (SPOOL_LIMIT / 4) as usize];
        for _ in 0..5 {
            s.submit(&run("chunk")).unwrap();
            let line = String::from_utf8(s.take_outbox()).unwrap();
            assert!(!line.starts_with(guest::TRUNCATE_SPOOL));
            let data = frame(&body, &twin.next_nonce(), 0);
            s.feed(&data, &mut notes);
            let c = twin.next_nonce();
            s.take_outbox();
            s.feed(&marker('C', &c, -1), &mut notes);
            s.take_result().unwrap();
            if s.framing.consumed() > SPOOL_LIMIT {
                break;
            }
        }
        s.submit(&run("next")).unwrap();
        let line = String::from_utf8(s.take_outbox()).unwrap();
        assert!(line.starts_with(guest::TRUNCATE_SPOOL), "{line:.40}");
    }

    #[test]
    fn late_output_is_stray_and_eof_loses_the_connection() {
        let (mut s, _) = ready();
        let mut notes = Vec::new();
        s.feed(b"TWO\n", &mut notes);
        assert_eq!(notes, vec![SessionNote::Stray(b"TWO\n".to_vec())]);
        s.connection_lost();
        assert!(s.lost() && !s.connected());
        s.restart();
        assert!(!s.lost() && !s.connected());
    }

    #[test]
    fn await_sentinel_needs_a_new_setup_before_requests() {
        let (mut s, mut twin) = ready();
        s.await_sentinel();
        assert_eq!(s.submit(&run("true")), Err(SessionError::NotConnected));
        let mut notes = Vec::new();
        s.feed(b"Spawning backdoor root shell...\n", &mut notes);
        assert!(!s.take_outbox().is_empty());
        s.feed(&frame(b"", &twin.next_nonce(), 0), &mut notes);
        assert!(s.ready());
    }
}
