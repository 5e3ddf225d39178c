//! Shell words in the commands ntd sends to guests: quoting a value as one bash word, and the
//! `systemctl` invocation for the system manager or a user's manager. Pure text; the one
//! place these rules live (waits, guest commands and the QEMU command line use them).

/// Quote `s` as one single-quoted bash word.
pub fn shell_quote(s: &str, out: &mut String) {
    out.push('\'');
    for (i, part) in s.split('\'').enumerate() {
        if i > 0 {
            out.push_str("'\\''");
        }
        out.push_str(part);
    }
    out.push('\'');
}

/// `systemctl QUERY` for the system manager, or for `user`'s manager upstream's wrapper
/// `su -l USER --shell /bin/sh -c $'XDG_RUNTIME_DIR=/run/user/`id -u` systemctl --user QUERY'`:
/// `query` is shell words, read by the user's shell. The testScript's `systemctl(q, user)`
/// and the unit waits both use this one wrapper.
///
/// Unlike upstream, `query` is quoted completely for `$'…'` (backslashes too, not only
/// single quotes), so the user's shell reads exactly `query` (upstream's turned escapes such
/// as the `\x2d` of systemd unit names into other characters). The user name is one word.
pub fn systemctl(query: &str, user: Option<&str>) -> String {
    match user {
        None => format!("systemctl {query}"),
        Some(u) => {
            let mut s = String::from("su -l ");
            shell_quote(u, &mut s);
            s.push_str(" --shell /bin/sh -c $'XDG_RUNTIME_DIR=/run/user/`id -u` systemctl --user ");
            for c in query.chars() {
                if c == '\\' || c == '\'' {
                    s.push('\\');
                }
                s.push(c);
            }
            s.push('\'');
            s
        }
    }
}

/// `s` as one single-quoted bash word.
pub fn quoted(s: &str) -> String {
    let mut q = String::new();
    shell_quote(s, &mut q);
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_word_survives_single_quotes_and_spaces() {
        assert_eq!(quoted("a b"), "'a b'");
        assert_eq!(quoted("it's"), "'it'\\''s'");
        assert_eq!(quoted(""), "''");
    }

    #[test]
    fn systemctl_for_a_user_quotes_the_query_for_ansi_c_and_the_user_as_a_word() {
        assert_eq!(systemctl("start a", None), "systemctl start a");
        assert_eq!(
            systemctl("show 'a\\x2db.service'", Some("al ice")),
            "su -l 'al ice' --shell /bin/sh -c $'XDG_RUNTIME_DIR=/run/user/`id -u` \
             systemctl --user show \\'a\\\\x2db.service\\''"
        );
    }
}
