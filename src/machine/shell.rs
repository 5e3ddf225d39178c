//! The backdoor shell protocol, host side: how the bytes coming back from the guest's root
//! shell on `/dev/hvc0` are cut into command results ([`ShellFraming`]). What is sent lives in
//! [`super::guest`]; the conversation (setup, requests, lost-output repair) in
//! [`super::session`].
//!
//! The guest runs `bash --norc /dev/hvc0` (NixOS test-instrumentation). Once the sentinel
//! `Spawning backdoor root shell...` has been seen, ntd sends one setup block that gives the
//! shell a persistent output pipe (fd 3, copied to hvc0 by one long-lived `tee`), `/dev/null` on
//! fd 5 and a few small functions. Each command is then one short line,
//! `_Nn=<nonce>; _Nc='<command>'; _Nr` (the wire form of `__ntd_n`, `__ntd_c`, `__ntd_r`), and
//! costs the guest one fork and no exec:
//! the command runs as `( eval "set -euo pipefail; …" )` with stdin `/dev/null` and stdout the
//! pipe (never the tty). Output and exit status come back on that pipe, ended by a marker that
//! carries a fresh random nonce:
//!
//! ```text
//! <raw output bytes>  \x01E<nonce> <exit status>\x01
//! ```
//!
//! so one round trip returns output and exit status, binary output passes unencoded, and output
//! that happens to contain marker bytes cannot end a frame (it would have to guess the nonce).
//! A command returns once every process holding its stdout has closed it, as upstream's does
//! (see [`super::guest::SETUP`]); while it waits for them, the guest reports them once, after
//! 10 s, with an `\x01H<nonce> <length>\x01` marker followed by `<length>` bytes of report
//! (`<pid> <command line>` lines). Bytes that arrive while no command runs (a process killed
//! at a timeout that still wrote, or a wait attempt's child) are reported as stray output
//! instead of corrupting the next result. (A start marker would separate late bytes more
//! precisely but costs a tenth of the per-command latency; it was measured and dropped.)
//! The virtio console drops guest output when the host falls behind (QEMU cannot throttle a
//! console port), so after a large frame the machine asks how large the guest's spool of it is
//! (`__ntd_count`, answered by `\x01C<nonce> <bytes>\x01`) and compares with what arrived;
//! a loss is repaired from the spool or reported, never silently returned.
//! Waits loop inside the guest (`__ntd_wait`), reporting every failed attempt that forked
//! with an `\x01A<nonce> <status>\x01` marker and the final one with `\x01D…`; a watchdog
//! coprocess enforces timeouts, so neither a timed command nor a wait execs anything but the
//! command (and, for a unit, its D-Bus watcher).
//!
//! This module is pure: it never touches a socket and never panics on what the guest sends.

use memchr::memmem;

/// What the backdoor prints once its shell is ready (NixOS test-instrumentation).
pub const SENTINEL: &[u8] = b"Spawning backdoor root shell...";

/// Largest command output kept; beyond it bytes are counted but dropped.
pub const MAX_OUTPUT: usize = 256 << 20;

/// Length of the hexadecimal nonce carried by every marker.
pub const NONCE_LEN: usize = 16;

/// `\x01` + kind + nonce: the part of a marker that must be complete before it can be matched.
const MARKER_HEAD: usize = 2 + NONCE_LEN;
/// Longest number suffix accepted after a marker head: three numbers (an `A` marker's
/// status, cost and pause: ` 1 9223372036854775807 9223372036854775807\x01`).
const MAX_STATUS_TAIL: usize = 44;
/// Largest report of processes holding a command's stdout kept (the guest sends at most
/// 16 KiB; beyond this, bytes are consumed and dropped).
pub const MAX_HELD_REPORT: usize = 64 * 1024;

/// One thing the shell byte stream told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellEvent {
    /// Bytes the guest printed before the sentinel (logged like upstream's "Guest shell says").
    Greeting(Vec<u8>),
    /// The sentinel arrived: the shell is ready for the setup block.
    Connected,
    /// Bytes outside any frame: late output of a background child, or noise.
    Stray(Vec<u8>),
    /// A guest-side wait attempt failed with this status; `output` is what it printed (not
    /// part of the wait's result, but never dropped silently: it may hold late output of a
    /// background process). `cost_us` is the CPU the loop charged it, `pause_us` the pause
    /// the loop chose before the next attempt (its pacing decision).
    Attempt {
        status: i32,
        output: Vec<u8>,
        cost_us: u64,
        pause_us: u64,
    },
    /// Answer to `__ntd_count`: the size of the guest's spool of the last frame (-1:
    /// unknown).
    Count { spooled: i64 },
    /// The command ended 10 s ago but processes still hold its stdout: the guest's report,
    /// `<pid> <command line>` lines. The command's frame continues.
    Held { report: Vec<u8> },
    /// A command finished. `looped` is true for waits whose loop ended by itself (`D` marker
    /// seen); for a wait whose `timeout` wrapper fired it is false and `status` is 124.
    Done {
        status: i32,
        output: Vec<u8>,
        truncated: usize,
        looped: bool,
        /// Bytes of the frame as the host received them, end marker included (all attempts
        /// included).
        frame_bytes: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the sentinel.
    AwaitSentinel,
    /// Connected, no command outstanding.
    Idle,
    /// A command was sent; its end marker has not arrived yet.
    InFrame,
    /// A count request was sent; waiting for its `C` marker.
    ExpectCount,
}

/// Splits the shell byte stream into [`ShellEvent`]s.
#[derive(Debug)]
pub struct ShellFraming {
    state: State,
    nonce: [u8; NONCE_LEN],
    /// Bytes received but not yet classified (bounded except while a marker may be pending).
    buf: Vec<u8>,
    output: Vec<u8>,
    truncated: usize,
    /// Status from a `D` marker, waiting for the wrapper's `E` marker.
    loop_status: Option<i32>,
    /// Bytes consumed from the stream since the sentinel.
    consumed: u64,
    /// `consumed` when the current frame's start marker ended.
    frame_start: u64,
    /// Bytes of a held-stdout report still to come, and what arrived of it.
    held_left: usize,
    held: Vec<u8>,
}

impl Default for ShellFraming {
    fn default() -> Self {
        Self::new()
    }
}

impl ShellFraming {
    pub fn new() -> Self {
        ShellFraming {
            state: State::AwaitSentinel,
            nonce: [b'0'; NONCE_LEN],
            buf: Vec::new(),
            output: Vec::new(),
            truncated: 0,
            loop_status: None,
            consumed: 0,
            frame_start: 0,
            held_left: 0,
            held: Vec::new(),
        }
    }

    /// A framing whose stream has no sentinel (a container command's stdout, which carries
    /// one wait loop's frame): idle from the start.
    pub fn new_connected() -> Self {
        ShellFraming {
            state: State::Idle,
            ..Self::new()
        }
    }

    /// True once the sentinel has been seen (and until [`Self::await_sentinel`]).
    #[cfg(test)]
    pub fn connected(&self) -> bool {
        self.state != State::AwaitSentinel
    }

    /// True while a command is outstanding.
    #[cfg(test)]
    pub fn busy(&self) -> bool {
        matches!(self.state, State::InFrame | State::ExpectCount)
    }

    /// A shell that already passed its sentinel, `consumed` bytes ago (a machine restored
    /// from a checkpoint: the guest's shell is the one that was saved).
    pub fn resumed(consumed: u64) -> Self {
        ShellFraming {
            state: State::Idle,
            consumed,
            ..ShellFraming::new()
        }
    }

    /// Forget the shell (guest rebooted or switched root): wait for the sentinel again.
    pub fn await_sentinel(&mut self) {
        *self = ShellFraming::new();
    }

    /// Register that a command framed with `nonce` has been sent.
    pub fn expect(&mut self, nonce: [u8; NONCE_LEN]) {
        debug_assert!(self.state == State::Idle);
        self.nonce = nonce;
        self.state = State::InFrame;
        self.output.clear();
        self.truncated = 0;
        self.loop_status = None;
        self.frame_start = self.consumed;
        self.held_left = 0;
        self.held.clear();
    }

    /// Register that `__ntd_count <nonce>` has been sent.
    pub fn expect_count(&mut self, nonce: [u8; NONCE_LEN]) {
        debug_assert!(self.state == State::Idle);
        self.nonce = nonce;
        self.state = State::ExpectCount;
    }

    /// Drop the first `n` buffered bytes, counting them as consumed.
    fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
        self.consumed += n as u64;
    }

    /// Bytes consumed from the stream since the sentinel.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Feed bytes read from the shell socket; complete events are appended to `events`.
    pub fn feed(&mut self, data: &[u8], events: &mut Vec<ShellEvent>) {
        self.buf.extend_from_slice(data);
        loop {
            let progressed = match self.state {
                State::AwaitSentinel => self.scan_sentinel(events),
                State::Idle => {
                    if !self.buf.is_empty() {
                        self.consumed += self.buf.len() as u64;
                        events.push(ShellEvent::Stray(std::mem::take(&mut self.buf)));
                    }
                    false
                }
                State::InFrame => self.scan_frame(events),
                State::ExpectCount => self.scan_count(events),
            };
            if !progressed {
                break;
            }
        }
    }

    fn scan_sentinel(&mut self, events: &mut Vec<ShellEvent>) -> bool {
        match memmem::find(&self.buf, SENTINEL) {
            Some(at) => {
                let mut end = at + SENTINEL.len();
                // The backdoor `echo`s the sentinel: its newline belongs to it.
                if self.buf.get(end) == Some(&b'\n') {
                    end += 1;
                }
                events.push(ShellEvent::Greeting(self.buf[..end].to_vec()));
                events.push(ShellEvent::Connected);
                self.buf.drain(..end);
                self.state = State::Idle;
                true
            }
            None => {
                // Report what cannot be part of a sentinel split across reads; keep the rest.
                let keep = SENTINEL.len() - 1;
                if self.buf.len() > keep {
                    let cut = self.buf.len() - keep;
                    events.push(ShellEvent::Greeting(self.buf[..cut].to_vec()));
                    self.buf.drain(..cut);
                }
                false
            }
        }
    }

    fn drop_stray(&mut self, n: usize, events: &mut Vec<ShellEvent>) {
        if n > 0 {
            events.push(ShellEvent::Stray(self.buf[..n].to_vec()));
            self.consume(n);
        }
    }

    fn scan_count(&mut self, events: &mut Vec<ShellEvent>) -> bool {
        match find_marker(&self.buf, &self.nonce, b"C") {
            Found::Marker {
                at, len, status, ..
            } => {
                self.drop_stray(at, events);
                events.push(ShellEvent::Count { spooled: status });
                self.consume(len);
                self.state = State::Idle;
                true
            }
            Found::NeedMore { safe } => {
                self.drop_stray(safe, events);
                false
            }
        }
    }

    /// Move what arrived of a held-stdout report out of the buffer; true once it is whole.
    fn take_held(&mut self, events: &mut Vec<ShellEvent>) -> bool {
        let n = self.held_left.min(self.buf.len());
        let room = MAX_HELD_REPORT.saturating_sub(self.held.len()).min(n);
        self.held.extend_from_slice(&self.buf[..room]);
        self.consume(n);
        self.held_left -= n;
        if self.held_left == 0 {
            events.push(ShellEvent::Held {
                report: std::mem::take(&mut self.held),
            });
        }
        n > 0
    }

    fn scan_frame(&mut self, events: &mut Vec<ShellEvent>) -> bool {
        if self.held_left > 0 {
            return self.take_held(events);
        }
        match find_marker(&self.buf, &self.nonce, b"EADH") {
            Found::Marker {
                at,
                len,
                kind,
                status,
                extra,
            } => {
                self.take_output(at);
                self.consume(len);
                let frame_bytes = self.consumed - self.frame_start;
                let status = status as i32;
                match kind {
                    b'A' => {
                        self.truncated = 0;
                        let [cost_us, pause_us] = extra.map(|x| u64::try_from(x).unwrap_or(0));
                        events.push(ShellEvent::Attempt {
                            status,
                            output: std::mem::take(&mut self.output),
                            cost_us,
                            pause_us,
                        });
                    }
                    b'D' => self.loop_status = Some(status),
                    b'H' => {
                        // `status` is the report's length; its bytes follow the marker.
                        self.held_left = usize::try_from(status).unwrap_or(0);
                        self.take_held(events);
                    }
                    _ => {
                        let (status, looped) = match self.loop_status.take() {
                            Some(s) => (s, true),
                            None => (status, false),
                        };
                        events.push(ShellEvent::Done {
                            status,
                            output: std::mem::take(&mut self.output),
                            truncated: std::mem::take(&mut self.truncated),
                            looped,
                            frame_bytes,
                        });
                        self.state = State::Idle;
                    }
                }
                true
            }
            Found::NeedMore { safe } => {
                self.take_output(safe);
                false
            }
        }
    }

    /// Move the first `n` buffered bytes into the command output (bounded by [`MAX_OUTPUT`]).
    fn take_output(&mut self, n: usize) {
        let room = MAX_OUTPUT.saturating_sub(self.output.len()).min(n);
        self.output.extend_from_slice(&self.buf[..room]);
        self.truncated += n - room;
        self.consume(n);
    }
}

enum Found {
    /// A marker of `kind` starts at `at` and is `len` bytes long; an `A` marker may carry
    /// two more numbers (`extra`, else zeros).
    Marker {
        at: usize,
        len: usize,
        kind: u8,
        status: i64,
        extra: [i64; 2],
    },
    /// No complete marker; the first `safe` bytes can never become part of one.
    NeedMore { safe: usize },
}

/// Find the first marker `\x01<kind><nonce> <number>\x01` whose kind is in `kinds`.
fn find_marker(hay: &[u8], nonce: &[u8; NONCE_LEN], kinds: &[u8]) -> Found {
    let finder = memmem::Finder::new(nonce);
    let mut from = 0;
    while let Some(rel) = finder.find(&hay[from..]) {
        let p = from + rel;
        from = p + 1;
        if p < 2 || hay[p - 2] != 0x01 || !kinds.contains(&hay[p - 1]) {
            continue;
        }
        let at = p - 2;
        let kind = hay[p - 1];
        let tail = &hay[p + NONCE_LEN..];
        match parse_tail(tail) {
            Tail::Complete { status, .. } if kind != b'C' && i32::try_from(status).is_err() => {
                continue
            }
            Tail::Complete { extra: Some(_), .. } if kind != b'A' => continue,
            Tail::Complete { len, status, extra } => {
                return Found::Marker {
                    at,
                    len: MARKER_HEAD + len,
                    kind,
                    status,
                    extra: extra.unwrap_or([0, 0]),
                }
            }
            Tail::Incomplete => return Found::NeedMore { safe: at },
            Tail::Invalid => continue,
        }
    }
    // A marker head may be split across reads: keep the last MARKER_HEAD - 1 bytes.
    Found::NeedMore {
        safe: hay.len().saturating_sub(MARKER_HEAD - 1),
    }
}

enum Tail {
    Complete {
        len: usize,
        status: i64,
        extra: Option<[i64; 2]>,
    },
    Incomplete,
    Invalid,
}

fn parse_tail(tail: &[u8]) -> Tail {
    match tail.first() {
        None => return Tail::Incomplete,
        Some(b' ') => {}
        Some(_) => return Tail::Invalid,
    }
    let Some(end) = memchr::memchr(0x01, &tail[1..tail.len().min(MAX_STATUS_TAIL)]) else {
        return if tail.len() < MAX_STATUS_TAIL {
            Tail::Incomplete
        } else {
            Tail::Invalid
        };
    };
    let Some(text) = std::str::from_utf8(&tail[1..1 + end]).ok() else {
        return Tail::Invalid;
    };
    // One number, or three (status, then two more) separated by single spaces.
    let mut numbers = text.split(' ').map(|n| n.parse::<i64>().ok());
    let parsed = match (
        numbers.next(),
        numbers.next(),
        numbers.next(),
        numbers.next(),
    ) {
        (Some(Some(status)), None, None, None) => Some((status, None)),
        (Some(Some(status)), Some(Some(a)), Some(Some(b)), None) => Some((status, Some([a, b]))),
        _ => None,
    };
    match parsed {
        Some((status, extra)) => Tail::Complete {
            len: end + 2,
            status,
            extra,
        },
        None => Tail::Invalid,
    }
}

/// Find the end marker of `nonce` in spooled bytes: `(output length, status)`.
pub fn parse_spool(spool: &[u8], nonce: &[u8; NONCE_LEN]) -> Option<(usize, i32)> {
    match find_marker(spool, nonce, b"E") {
        Found::Marker { at, status, .. } => Some((at, status as i32)),
        Found::NeedMore { .. } => None,
    }
}

/// A fresh nonce from a small xorshift generator seeded from the OS.
#[derive(Debug)]
pub struct NonceSource(u64);

impl NonceSource {
    pub fn new() -> Self {
        let mut seed = [0u8; 8];
        let got = rustix::rand::getrandom(&mut seed, rustix::rand::GetRandomFlags::empty());
        let mut s = u64::from_le_bytes(seed);
        if got.is_err() || s == 0 {
            // Fall back on time and pid; uniqueness matters, secrecy barely does.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1);
            s = t ^ ((std::process::id() as u64) << 32) | 1;
        }
        NonceSource(s)
    }

    /// A reproducible sequence (tests); `seed` 0 is replaced by 1 (xorshift needs a set bit).
    #[cfg(test)]
    pub fn from_seed(seed: u64) -> Self {
        NonceSource(seed.max(1))
    }

    pub fn next_nonce(&mut self) -> [u8; NONCE_LEN] {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let mut out = [0u8; NONCE_LEN];
        for (i, b) in out.iter_mut().enumerate() {
            *b = b"0123456789abcdef"[((v >> (60 - 4 * i)) & 0xf) as usize];
        }
        out
    }
}

impl Default for NonceSource {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
#[path = "shell_tests.rs"]
mod tests;
