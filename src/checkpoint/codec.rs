//! How a migration stream is written to disk and read back: the `exec:` commands QEMU runs
//! (through `/bin/sh -c`) for a save and a restore, raw or compressed by an installed
//! `zstd` or `gzip` (ntd links no compression library). Pure text, plus a `PATH` look-up.
//!
//! **Why the writer runs in the background.** When a migration completes, QEMU closes the
//! pipe and, at once, sends SIGTERM (then SIGKILL 10 ms later) to the `exec:` command's
//! process unless it has already exited (`qio_channel_command_abort`). A writer that is
//! still flushing its last buffers must not be that process, and ntd must know when the file
//! is complete. So the command QEMU runs starts the writer as a background job reading a
//! copy of the pipe (fd 3) and exits at once; the writer writes `FILE.part` and renames it
//! to `FILE` when its input ended and it succeeded. The save waits for `FILE` to appear. A
//! migration that fails also ends the writer's input, so a `FILE` only counts once QEMU said
//! the migration completed.

use crate::machine::words::shell_quote;
use std::path::Path;

/// How the stream is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    /// As QEMU wrote it (boot checkpoints and named snapshots: restoring is what counts).
    #[default]
    Raw,
    /// `zstd -1` (failure capsules: a few times smaller, fast).
    Zstd,
    /// `gzip -1` (failure capsules where zstd is not installed).
    Gzip,
}

impl Codec {
    /// The manifest's word for it.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Raw => "raw",
            Codec::Zstd => "zstd",
            Codec::Gzip => "gzip",
        }
    }

    pub fn parse(word: &str) -> Option<Codec> {
        [Codec::Raw, Codec::Zstd, Codec::Gzip]
            .into_iter()
            .find(|c| c.name() == word)
    }

    /// The program it needs (`None`: only the shell's `cat`).
    pub fn program(self) -> Option<&'static str> {
        match self {
            Codec::Raw => None,
            Codec::Zstd => Some("zstd"),
            Codec::Gzip => Some("gzip"),
        }
    }

    fn compress(self) -> &'static str {
        match self {
            Codec::Raw => "cat",
            Codec::Zstd => "zstd -q -1 -T0 -c",
            Codec::Gzip => "gzip -1 -c",
        }
    }

    fn decompress(self) -> &'static str {
        match self {
            Codec::Raw => "cat",
            Codec::Zstd => "zstd -q -d -c",
            Codec::Gzip => "gzip -d -c",
        }
    }

    /// The compressed codec to use with the programs found by `have` (zstd, else gzip,
    /// else raw).
    pub fn best(have: &dyn Fn(&str) -> bool) -> Codec {
        [Codec::Zstd, Codec::Gzip]
            .into_iter()
            .find(|c| c.program().is_some_and(have))
            .unwrap_or(Codec::Raw)
    }

    /// The `exec:` command of a save into `file` (see the module documentation).
    pub fn save_command(self, file: &Path) -> String {
        let (mut part, mut done) = (String::new(), String::new());
        shell_quote(&format!("{}.part", file.display()), &mut part);
        shell_quote(&file.display().to_string(), &mut done);
        format!(
            "exec 3<&0; {{ {} <&3 >{part} && mv -f {part} {done}; }} 3<&3 &",
            self.compress()
        )
    }

    /// The `exec:` command of a restore from `file`.
    pub fn load_command(self, file: &Path) -> String {
        let mut cmd = format!("{} ", self.decompress());
        shell_quote(&file.display().to_string(), &mut cmd);
        cmd
    }
}

/// Whether `program` is an executable file in one of `PATH`'s directories.
pub fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| {
        let p = d.join(program);
        p.is_file() && rustix::fs::access(&p, rustix::fs::Access::EXEC_OK).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    #[test]
    fn names_round_trip_and_best_prefers_zstd_then_gzip() {
        for c in [Codec::Raw, Codec::Zstd, Codec::Gzip] {
            assert_eq!(Codec::parse(c.name()), Some(c));
        }
        assert_eq!(Codec::parse("lz4"), None);
        assert_eq!(Codec::best(&|p| p == "zstd" || p == "gzip"), Codec::Zstd);
        assert_eq!(Codec::best(&|p| p == "gzip"), Codec::Gzip);
        assert_eq!(Codec::best(&|_| false), Codec::Raw);
    }

    #[test]
    fn commands_quote_the_path() {
        let f = Path::new("/tmp/a b/ram");
        assert_eq!(
            Codec::Raw.save_command(f),
            "exec 3<&0; { cat <&3 >'/tmp/a b/ram.part' && mv -f '/tmp/a b/ram.part' \
             '/tmp/a b/ram'; } 3<&3 &"
        );
        assert_eq!(Codec::Zstd.load_command(f), "zstd -q -d -c '/tmp/a b/ram'");
    }

    /// The save command as QEMU runs it: `/bin/sh -c` exits while the writer still reads;
    /// the file appears complete, under its final name only.
    #[test]
    fn save_command_survives_its_shell_and_load_command_reads_it_back() {
        let dir = std::env::temp_dir().join(format!("ntd-codec-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ram");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut sh = Command::new("/bin/sh")
            .arg("-c")
            .arg(Codec::Raw.save_command(&file))
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = sh.stdin.take().unwrap();
        assert!(sh.wait().unwrap().success(), "the shell returns at once");
        stdin.write_all(&data).unwrap();
        drop(stdin);
        let mut waited = 0;
        while !file.exists() && waited < 500 {
            std::thread::sleep(std::time::Duration::from_millis(10));
            waited += 1;
        }
        assert!(!dir.join("ram.part").exists());
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(Codec::Raw.load_command(&file))
            .output()
            .unwrap();
        assert_eq!(out.stdout, data);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
