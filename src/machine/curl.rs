//! Where a `wait_until_succeeds("curl …")` connects, so that its attempts can first try a
//! builtin TCP connect and skip the `curl` (a fork and an exec that cost a TCG guest
//! 0.1–0.2 s of CPU each) while nothing listens there: `curl` would fail too.
//!
//! Only a command line whose whole meaning is known qualifies: one simple command (plain
//! words, quoted strings without expansions; no `;`, pipes, redirections, `$`), a program
//! named `curl`, options from a list whose effect on the connection is known, and one
//! `http://` or `https://` URL with a plain host name or IPv4 address. Excluded: proxies,
//! `--resolve`, `--connect-to`, unix sockets, config files, retries, URL globs, and time
//! limits (where a firewall drops packets a connect hangs; the guard would hang as long as
//! a `curl` without a limit, but `--connect-timeout` makes `curl` start afresh). Anything
//! else gets no guard and runs as before. The guest-side guard (`__ntd_url` in
//! [`super::guest::SETUP_WAITS`]) still runs `curl` whenever a proxy variable is set, a
//! `.curlrc` exists or bash has no `/dev/tcp`. Pure text: no I/O.

/// The host and port a qualifying `curl` command line connects to first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

/// Options without an argument whose effect on where `curl` connects is none.
const FLAGS: &[&str] = &[
    "--fail",
    "--fail-with-body",
    "--fail-early",
    "--silent",
    "--show-error",
    "--location",
    "--insecure",
    "--include",
    "--head",
    "--compressed",
    "--verbose",
    "--no-progress-meter",
    "--no-buffer",
    "--http1.1",
];
/// Options with one argument, likewise.
const WITH_ARG: &[&str] = &[
    "--output",
    "--header",
    "--request",
    "--data",
    "--data-raw",
    "--data-binary",
    "--data-urlencode",
    "--write-out",
    "--user",
    "--user-agent",
    "--referer",
    "--cookie",
    "--max-redirs",
    "--cacert",
    "--json",
];
/// Short forms: `-fsSLkiIvN`, and `-o -H -X -d -w -u -A -e -b` with an argument.
const SHORT_FLAGS: &[u8] = b"fsSLkiIvN";
const SHORT_WITH_ARG: &[u8] = b"oHXdwuAeb";

/// The words of `command` if it is one simple command of literal words: unquoted characters
/// from a safe set, `'…'`, and `"…"` without `$`, `` ` ``, `\` or `!`.
fn literal_words(command: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => w.push(c),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '"' => break,
                        '$' | '`' | '\\' | '!' => return None,
                        c => w.push(c),
                    }
                }
            }
            // Unquoted `?` would glob and `&` end the command: quoted only.
            c if c.is_ascii_alphanumeric() || "_./:@%+=,-".contains(c) => {
                word.get_or_insert_with(String::new).push(c);
            }
            _ => return None,
        }
    }
    words.extend(word);
    Some(words)
}

/// The target of `command`, if it is a `curl` command line this module understands.
pub fn target(command: &str) -> Option<Target> {
    let words = literal_words(command.trim())?;
    let (program, args) = words.split_first()?;
    if program.rsplit('/').next() != Some("curl") || program.starts_with('~') {
        return None;
    }
    let mut url: Option<&str> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(long) = a.strip_prefix("--") {
            if long.is_empty() {
                return None;
            }
            if a == "--url" {
                if url.replace(it.next()?).is_some() {
                    return None;
                }
            } else if WITH_ARG.contains(&a.as_str()) {
                it.next()?;
            } else if !FLAGS.contains(&a.as_str()) {
                return None;
            }
        } else if let Some(short) = a.strip_prefix('-') {
            let bytes = short.as_bytes();
            if bytes.is_empty() {
                return None;
            }
            for (i, b) in bytes.iter().enumerate() {
                if SHORT_WITH_ARG.contains(b) {
                    if i + 1 == bytes.len() {
                        it.next()?;
                    }
                    break;
                }
                if !SHORT_FLAGS.contains(b) {
                    return None;
                }
            }
        } else if url.replace(a).is_some() {
            return None;
        }
    }
    parse_url(url?)
}

/// Host and port of an `http://` or `https://` URL with a plain host (a name or an IPv4
/// address, no user info, no IPv6 literal) and no glob characters.
fn parse_url(url: &str) -> Option<Target> {
    if url.contains(['[', ']', '{', '}']) {
        return None;
    }
    let (scheme, rest) = url.split_once("://")?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let (host, port) = match authority.split_once(':') {
        Some((h, p)) => {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (h, p.parse::<u16>().ok().filter(|p| *p != 0)?)
        }
        None => (authority, default_port),
    };
    let plain = !host.is_empty()
        && !host.starts_with(['-', '.'])
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    plain.then(|| Target {
        host: host.to_ascii_lowercase(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, port: u16) -> Option<Target> {
        Some(Target {
            host: host.into(),
            port,
        })
    }

    #[test]
    fn plain_curl_command_lines_name_their_target() {
        assert_eq!(
            target("curl --fail --silent http://server:3000/todos"),
            t("server", 3000)
        );
        assert_eq!(target("curl -fsS http://10.0.0.2/"), t("10.0.0.2", 80));
        assert_eq!(target("curl -sSfL https://Web.Local"), t("web.local", 443));
        assert_eq!(
            target("/nix/store/abc-curl-8.9/bin/curl -o /dev/null -w '%{http_code}' 'http://a:8080/x?y=1&z=2'"),
            t("a", 8080)
        );
        assert_eq!(
            target("curl -H \"Host: example.org\" -so/dev/null http://localhost:80"),
            t("localhost", 80)
        );
        assert_eq!(target("curl --url http://b:1 -f"), t("b", 1));
    }

    #[test]
    fn anything_not_fully_understood_gets_no_guard() {
        for c in [
            "curl -x http://proxy:3128 http://a/",
            "curl --proxy http://p http://a/",
            "curl --resolve a:80:1.2.3.4 http://a/",
            "curl --connect-to a:80:b:81 http://a/",
            "curl --unix-socket /run/s http://a/",
            "curl -K /etc/c http://a/",
            "curl --retry 5 --retry-connrefused http://a/",
            "curl http://a/ http://b/",
            "curl http://a/[1-3]",
            "curl http://{a,b}/",
            "curl http://user@a/",
            "curl http://[::1]:80/",
            "curl ftp://a/",
            "curl a:80",
            "curl http://a:/",
            "curl http://a:0/",
            "curl http://a:99999/",
            "curl http://$HOST/",
            "curl \"http://$h/\"",
            "curl http://a/ | grep x",
            "curl http://a/ && true",
            "curl http://a/x?y=1",
            "curl http://a/x=1&z=2",
            "curl http://a/ >/dev/null",
            "curl http://a/; true",
            "curl `echo http://a/`",
            "curl --max-time=5 http://a/",
            "curl --max-time 5 http://a/",
            "curl -m 5 http://a/",
            "curl --connect-timeout 2 http://a/",
            "curl -- http://a/",
            "curl -",
            "curl -fz http://a/",
            "curl 'http://a/",
            "wget http://a/",
            "curlx http://a/",
            "curl",
            "",
            "curl -o",
        ] {
            assert_eq!(target(c), None, "{c}");
        }
    }
}
