//! The `sd_notify` datagrams a container's `systemd-nspawn` sends to `NOTIFY_SOCKET`, parsed:
//! `X_NSPAWN_LEADER_PID=<pid>` (the container's PID 1 as the host sees it, which every
//! `nsenter` targets), `READY=1` (nspawn sends it once the container's init runs, and forwards
//! the container's own `READY=1` later, again after every `daemon-reexec`), `STATUS=`, and
//! `STOPPING=1`. Pure: bytes in, a [`Notice`] out; never panics on what it is sent.

/// Largest datagram read (systemd's own limit for a notification is 4096 bytes).
pub const MAX_DATAGRAM: usize = 8192;

/// What one datagram said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notice {
    pub ready: bool,
    pub stopping: bool,
    /// A valid leader pid (positive).
    pub leader: Option<i32>,
    pub status: Option<String>,
}

/// Parse one datagram: newline-separated `KEY=VALUE` assignments; unknown keys, malformed
/// lines and invalid UTF-8 are ignored (as systemd does).
pub fn parse(datagram: &[u8]) -> Notice {
    let mut n = Notice::default();
    for line in datagram.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line == b"READY=1" {
            n.ready = true;
        } else if line == b"STOPPING=1" {
            n.stopping = true;
        } else if let Some(v) = line.strip_prefix(b"X_NSPAWN_LEADER_PID=") {
            n.leader = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<i32>().ok())
                .filter(|&p| p > 1)
                .or(n.leader);
        } else if let Some(v) = line.strip_prefix(b"STATUS=") {
            n.status = Some(String::from_utf8_lossy(v).into_owned());
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_nspawns_first_datagram_gives_status_and_leader() {
        let n = parse(b"STATUS=Container running.\nX_NSPAWN_LEADER_PID=9252");
        assert_eq!(n.leader, Some(9252));
        assert_eq!(n.status.as_deref(), Some("Container running."));
        assert!(!n.ready && !n.stopping);
    }

    #[test]
    fn parse_ready_and_stopping_alone_or_together() {
        assert!(parse(b"READY=1\n").ready);
        assert!(parse(b"READY=1").ready);
        let n = parse(b"STOPPING=1\nSTATUS=Container shutting down.");
        assert!(n.stopping && !n.ready);
        assert!(parse(b"READY=1\nX_NSPAWN_LEADER_PID=77\n").ready);
    }

    #[test]
    fn parse_ignores_garbage_and_impossible_pids() {
        for bad in [
            &b"X_NSPAWN_LEADER_PID="[..],
            b"X_NSPAWN_LEADER_PID=-5",
            b"X_NSPAWN_LEADER_PID=1",
            b"X_NSPAWN_LEADER_PID=12a",
            b"X_NSPAWN_LEADER_PID=99999999999",
            b"READY=0",
            b"READY=1 ",
            b"\xff\xfe\x00",
            b"",
        ] {
            let n = parse(bad);
            assert_eq!(n.leader, None, "{bad:?}");
            assert!(!n.ready, "{bad:?}");
        }
        assert_eq!(
            parse(b"STATUS=\xffok").status.as_deref(),
            Some("\u{fffd}ok")
        );
    }

    #[test]
    fn parse_any_byte_soup_never_panics() {
        let mut x: u64 = 7;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    [b'\n', b'=', b'1', b'R', b'X', (x >> 24) as u8][(x % 6) as usize]
                })
                .collect();
            let _ = parse(&bytes);
        }
    }
}
