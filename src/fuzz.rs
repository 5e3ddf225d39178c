//! Fuzzing of every parser that reads input ntd does not control: the VDE handshake (any
//! local process), the QMP reader (QEMU), the shim's JSON line protocol (a testScript), the
//! shell reply decoder (the guest) and the command line.
//!
//! A small mutation fuzzer, no dependency and no nightly toolchain: valid seed inputs are
//! mutated (bit flips, interesting bytes, inserted dictionary tokens, cut, duplicated and
//! spliced ranges) and fed to each parser, whole and in random chunks. Properties: no panic,
//! bounded buffers, and chunking never changes the result. Each target runs for
//! `NTD_FUZZ_SECS` seconds (default 2; CI runs longer); `NTD_FUZZ_SEED` replays a run. A
//! failing input is printed and written to `target/fuzz-<target>-<seed>.bin`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// splitmix64: small, fast, good enough to drive mutations reproducibly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, b'\n', b'\r', b'"', b'\\', b'{', b'}',
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], dict: &[&[u8]]) -> Vec<u8> {
    let mut v = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(6) {
        let len = v.len();
        match rng.below(8) {
            0 if len > 0 => {
                let at = rng.below(len);
                v[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                v[at] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 if !dict.is_empty() => {
                let at = rng.below(len + 1);
                let tok = dict[rng.below(dict.len())];
                v.splice(at..at, tok.iter().copied());
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = a + rng.below(len - a + 1);
                v.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let copy = v[a..b].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, copy);
            }
            5 => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(v.len() + 1);
                let from = rng.below(other.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            6 if len > 0 => v.truncate(rng.below(len)),
            _ => {
                let n = rng.below(16);
                let at = rng.below(len + 1);
                let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(at..at, junk);
            }
        }
    }
    v
}

/// Random cut points for feeding `input` in pieces.
fn chunks<'a>(rng: &mut Rng, input: &'a [u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < input.len() {
        let max = if rng.below(2) == 0 { 8 } else { 4096 };
        let n = 1 + rng.below((input.len() - at).min(max));
        out.push(&input[at..at + n]);
        at += n;
    }
    out
}

/// Run `check` on mutated inputs for the time budget; panics with the failing input.
fn fuzz(target: &str, seeds: &[Vec<u8>], dict: &[&[u8]], check: impl Fn(&mut Rng, &[u8])) {
    let secs: f64 = std::env::var("NTD_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let seed: u64 = std::env::var("NTD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let mut rng = Rng(seed);
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut runs = 0u64;
    while Instant::now() < until {
        for _ in 0..64 {
            let input = if runs < seeds.len() as u64 {
                seeds[runs as usize].clone()
            } else {
                mutate(&mut rng, seeds, dict)
            };
            let mut inner = Rng(rng.next());
            let r = catch_unwind(AssertUnwindSafe(|| check(&mut inner, &input)));
            if let Err(e) = r {
                let path = format!(
                    "{}/target/fuzz-{target}-{seed}.bin",
                    env!("CARGO_MANIFEST_DIR")
                );
                let _ = std::fs::write(&path, &input);
                std::panic::resume_unwind(Box::new(format!(
                    "fuzz target {target} failed (NTD_FUZZ_SEED={seed}, input in {path}): {:?}\n{:?}",
                    e.downcast_ref::<String>().map(String::as_str).or(e.downcast_ref::<&str>().copied()),
                    String::from_utf8_lossy(&input)
                )));
            }
            runs += 1;
        }
    }
    eprintln!("fuzz {target}: {runs} inputs in {secs} s (NTD_FUZZ_SEED={seed}), no failure");
}

#[test]
fn fuzz_vde_handshake() {
    use crate::vde::wire::{encode_request, parse_request, PortRequest, RequestBuffer};
    let path = std::path::Path::new("/tmp/vde.12345-00000");
    let seeds: Vec<Vec<u8>> = [
        (PortRequest::Any, "QEMU user=root pid=1234"),
        (PortRequest::Explicit(7), ""),
        (PortRequest::Management, "vde_plug user=x PID=9 SSH=1.2.3.4"),
    ]
    .into_iter()
    .filter_map(|(p, d)| encode_request(p, path, d).ok())
    .collect();
    fuzz(
        "vde",
        &seeds,
        &[b"\xce\xfa\xed\xfe", b"\x03\0\0\0", b"/", b"\0"],
        |rng, input| {
            let whole = parse_request(input);
            let mut buf = RequestBuffer::new();
            for c in chunks(rng, input) {
                buf.push(c);
            }
            assert!(buf.len() <= input.len());
            if buf.len() == input.len() {
                assert_eq!(buf.parse(), whole, "chunked assembly changed the result");
            }
        },
    );
}

#[test]
fn fuzz_qmp_reader() {
    use crate::machine::qmp::QmpClient;
    let seeds: Vec<Vec<u8>> = vec![
        b"{\"QMP\": {\"version\": {\"qemu\": {\"major\": 10}}, \"capabilities\": []}}\r\n\
          {\"return\": {}, \"id\": 0}\r\n{\"return\": {\"enabled\": false, \"present\": true}, \"id\": 0}\r\n"
            .to_vec(),
        b"{\"event\": \"STOP\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\r\n\
          {\"error\": {\"class\": \"GenericError\", \"desc\": \"x\"}, \"id\": 1}\r\n"
            .to_vec(),
        b"{\"return\": \"text with \\\"quotes\\\" and \\u00e9\", \"id\": 2}\n".to_vec(),
    ];
    let dict: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"id\":",
        b"\"return\":",
        b"1e999",
        b"\\u",
        b"\r\n",
    ];
    fuzz("qmp", &seeds, dict, |rng, input| {
        let run = |pieces: Vec<&[u8]>| {
            let mut c = QmpClient::new();
            let mut notes = Vec::new();
            for p in pieces {
                c.feed(p, &mut notes);
            }
            let _ = c.execute("x", None);
            let mut events = 0;
            while c.next_event().is_some() {
                events += 1;
            }
            (format!("{notes:?}"), events, c.ready(), c.take_outbox())
        };
        let whole = run(vec![input]);
        let pieces = run(chunks(rng, input));
        assert_eq!(whole, pieces, "chunking changed what the QMP client saw");
    });
}

#[test]
fn fuzz_shim_requests() {
    use crate::rpc::ops::decode;
    let seeds: Vec<Vec<u8>> = [
        r#"{"id":1,"op":"execute","machine":"m","command":"true","timeout":900.0,"check_output":true}"#,
        r#"{"id":2,"op":"wait_port","machine":"m","addr":"::1","port":80,"timeout":1.5,"age":0.5,"slice":null}"#,
        r#"{"id":6,"op":"impair","vlan":1,"loss":0.1,"delay":0.05,"rate":"1mbit","between":["a","b"]}"#,
        r#"{"op":"log","level":"info","machine":null,"msg":"h\u00e9\n"}"#,
        r#"{"id":3,"op":"start","machines":["a","b"],"all":true}"#,
        r#"{"id":4,"op":"qmp","machine":"m","execute":"x","arguments":{"a":[1,2,{"b":null}]}}"#,
        r#"{"id":5,"op":"create_machine","start_command":"run-x-vm","name":null}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let dict: &[&[u8]] = &[
        b"\"timeout\":",
        b"1e308",
        b"-0",
        b"NaN",
        b"Infinity",
        b"null",
        b"[[[[",
        b"\\ud800",
        b"\"op\":\"wait_unit\"",
        b"\"unit\":\"u\"",
        b"\"slice\":",
    ];
    fuzz("shim", &seeds, dict, |_, input| {
        match decode(input) {
            Ok(req) => {
                // A decoded request names its op as the line did.
                let v = crate::json::Value::parse(input).expect("decoded lines are JSON");
                let op = v.get("op").and_then(crate::json::Value::as_str);
                assert_eq!(op, Some(req.op.name()));
            }
            Err(e) => assert!(!e.error.msg.is_empty()),
        }
    });
}

#[test]
fn fuzz_shell_replies() {
    use crate::machine::session::{ShellRequest, ShellSession};
    use crate::machine::shell::{NonceSource, ShellEvent, ShellFraming};
    // The guest's side of a conversation: sentinel, setup check, then frames for requests.
    let mut twin = NonceSource::from_seed(7);
    let n0 = String::from_utf8_lossy(&twin.next_nonce()).into_owned();
    let n1_nonce = twin.next_nonce();
    let n1_bytes = &n1_nonce;
    let n1 = String::from_utf8_lossy(&n1_nonce).into_owned();
    let seeds: Vec<Vec<u8>> = vec![
        format!("noise\nSpawning backdoor root shell...\n\x01E{n0} 0\x01out\x01E{n1} 0\x01").into_bytes(),
        format!("Spawning backdoor root shell...\n\x01E{n0} 3\x01\x01A{n1} 1\x01x\x01D{n1} 0\x01\x01E{n1} 0\x01late").into_bytes(),
        format!("Spawning backdoor root shell...\n\x01E{n0} 0\x01\x01E{n0} 0\x01\x01C{n1} -1\x01").into_bytes(),
    ];
    let dict: &[&[u8]] = &[
        b"\x01E",
        b"\x01A",
        b"\x01D",
        b"\x01C",
        b"\x01",
        n0.as_bytes(),
        n1.as_bytes(),
        b" -9223372036854775808",
        b"Spawning backdoor root shell...",
    ];
    fuzz("shell", &seeds, dict, |rng, input| {
        // Requests submitted between pieces: nothing the guest sends may crash the session.
        let mut s = ShellSession::new(NonceSource::from_seed(7));
        let mut notes = Vec::new();
        for p in chunks(rng, input) {
            s.feed(p, &mut notes);
            let _ = s.submit(&ShellRequest::Run {
                command: "true".into(),
                timeout: Some(std::time::Duration::from_secs(1)),
            });
            let _ = s.take_result();
            let _ = s.take_outbox();
        }
        // The framing (the parser under the session), expecting a frame, reports the same
        // bytes whatever the chunking: output and stray bytes may come in more pieces, so
        // their concatenations are compared. (The session itself reacts between reads, as a
        // real guest only answers what it was sent.)
        let frames = |pieces: Vec<&[u8]>| {
            let mut f = ShellFraming::new();
            let mut events = Vec::new();
            f.feed(b"Spawning backdoor root shell...\n", &mut events);
            f.expect(*n1_bytes);
            events.clear();
            for p in pieces {
                f.feed(p, &mut events);
            }
            let mut merged: Vec<ShellEvent> = Vec::new();
            for e in events {
                match (merged.last_mut(), e) {
                    (Some(ShellEvent::Greeting(a)), ShellEvent::Greeting(b))
                    | (Some(ShellEvent::Stray(a)), ShellEvent::Stray(b)) => a.extend(b),
                    (_, e) => merged.push(e),
                }
            }
            merged
        };
        let whole = frames(vec![input]);
        let pieces = frames(chunks(rng, input));
        // Frame sizes count bytes consumed, which do not depend on chunking either.
        assert_eq!(whole, pieces, "chunking changed what the framing reported");
    });
}

#[test]
fn fuzz_command_line() {
    use crate::cli::{parse, Env};
    struct NoEnv;
    impl Env for NoEnv {
        fn get(&self, _: &str) -> Option<String> {
            None
        }
    }
    let seeds: Vec<Vec<u8>> = [
        "--vm-names|a|--vm-start-scripts|/s/run-a-vm|--vlans|1|2|t.py",
        "-c|/nonexistent.json|--test-script=/t|-K|--log-level=debug",
        "--start-scripts|/x/run-b-vm|--global-timeout|600|-I|--junit-xml|j.xml",
        "-o|/tmp|--debug-hook=x|--no-interactive|--capture-dir|/tmp|t.py",
    ]
    .iter()
    .map(|s| s.replace('|', "\0").into_bytes())
    .collect();
    let dict: &[&[u8]] = &[
        b"\0",
        b"--",
        b"-",
        b"=",
        b"\xc3\xa9",
        b"1e300",
        b"-\xc3\xa9",
        b"--vm",
        b"--co",
    ];
    fuzz("cli", &seeds, dict, |_, input| {
        let args: Vec<String> = input
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args
            .iter()
            .any(|a| a == "-h" || a.starts_with("--h") || a.starts_with("/dev"))
        {
            return; // --help prints the usage; a device as configuration file may never end
        }
        let _ = parse(&args, &NoEnv);
    });
}
