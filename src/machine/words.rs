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

/// `systemctl`, or for a user manager the `su` wrapper upstream's `systemctl(q, user)` uses,
/// taking the arguments that follow as `"$@"` (the word after `--` is the inner shell's `$0`).
pub fn systemctl(user: Option<&str>) -> String {
    match user {
        None => "systemctl".into(),
        Some(u) => {
            let mut s = String::from("su -l ");
            shell_quote(u, &mut s);
            s.push_str(
                " --shell /bin/sh -c 'XDG_RUNTIME_DIR=/run/user/$(id -u) exec systemctl --user \"$@\"' -- systemctl",
            );
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
}
