//! The checkpoint key of a machine: everything that decides what booting it produces.
//!
//! A machine's *own* hash covers its start command and, when that is a script, the script's
//! bytes; every absolute path either names that exists (a `/nix/store` path by its path,
//! which is immutable; a regular file up to [`CONTENT_LIMIT`] by its length and CRC-32; a
//! larger file by its device, inode, length, modification and change times — any write
//! changes the change time, so only a same-second rewrite that also restores the length and
//! modification time could slip through, which nothing does to a disk image by accident;
//! anything else by its type); every environment variable the texts mention, with its value
//! (except the per-run ones ntd sets itself: `TMPDIR`, `USE_TMPDIR`, `SHARED_DIR` and the vlan
//! sockets, whose numbers count instead); the machine's name and number; the shape of the
//! arguments ntd appends; and [`super::FORMAT_VERSION`]. The *key* adds the own hashes of
//! every machine of the run sharing a vlan with it: a checkpoint of a networked machine is
//! only valid next to the same peers. QEMU's version is checked separately, against QMP's
//! `query-version`, before the state is loaded. Files that the named files name in turn are
//! not followed.
//!
//! [`scan`] and the hashing are pure; [`gather`] is the only part that reads files.

use super::sha256::{hex, Sha256};
use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Files up to this size are identified by their content (CRC-32), larger ones by metadata.
pub const CONTENT_LIMIT: u64 = 16 << 20;
/// A start script larger than this is not read as text (it is identified like any file).
const SCRIPT_LIMIT: u64 = 1 << 20;
/// Environment variables ntd sets per run; their values are paths of the run, not inputs.
const PER_RUN_VARS: &[&str] = &["TMPDIR", "USE_TMPDIR", "SHARED_DIR"];
const VDE_VAR: &str = "QEMU_VDE_SOCKET_";

/// How one named path is identified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileId {
    /// Under `/nix/store`: the path is the identity.
    Store,
    /// A regular file identified by its content.
    Content { len: u64, crc: u32 },
    /// A large regular file identified by its metadata.
    Stat {
        dev: u64,
        ino: u64,
        len: u64,
        mtime_ns: i128,
        ctime_ns: i128,
    },
    /// A directory, device or socket: its type only.
    Other(&'static str),
}

impl FileId {
    fn hash_into(&self, h: &mut Sha256) {
        match self {
            FileId::Store => h.field(b"store"),
            FileId::Content { len, crc } => h.field(format!("content {len} {crc:08x}").as_bytes()),
            FileId::Stat {
                dev,
                ino,
                len,
                mtime_ns,
                ctime_ns,
            } => h.field(format!("stat {dev} {ino} {len} {mtime_ns} {ctime_ns}").as_bytes()),
            FileId::Other(kind) => h.field(kind.as_bytes()),
        }
    }
}

/// What a start command names: absolute paths and environment variables (pure).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scan {
    pub paths: Vec<String>,
    pub vars: Vec<String>,
    pub vlans: Vec<u32>,
}

fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"/._+-@%~".contains(&b)
}

fn is_var_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_var_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Find absolute paths (`/` after a non-path byte, then path bytes), `$NAME`/`${NAME…}`
/// references and the vlans (`QEMU_VDE_SOCKET_<n>`) in `text`. Sorted, without duplicates.
pub fn scan(texts: &[&[u8]]) -> Scan {
    let mut s = Scan::default();
    for text in texts {
        let mut i = 0;
        while i < text.len() {
            let b = text[i];
            // `${VAR:-/default}` and `${VAR:+/alt}` start a path after their `-`/`+`.
            let default_value = i > 1 && b"-+".contains(&text[i - 1]) && text[i - 2] == b':';
            let after_path_byte = i > 0 && is_path_byte(text[i - 1]) && !default_value;
            if b == b'/' && !after_path_byte {
                let end = text[i..]
                    .iter()
                    .position(|&c| !is_path_byte(c))
                    .map_or(text.len(), |n| i + n);
                let p = String::from_utf8_lossy(&text[i..end]);
                let p = p.trim_end_matches(['.', '/']);
                if p.len() > 1 && !p.contains("//") {
                    s.paths.push(p.to_owned());
                }
                i = end;
                continue;
            }
            if b == b'$' {
                let start = if text.get(i + 1) == Some(&b'{') {
                    i + 2
                } else {
                    i + 1
                };
                if text.get(start).is_some_and(|&c| is_var_start(c)) {
                    let end = text[start..]
                        .iter()
                        .position(|&c| !is_var_byte(c))
                        .map_or(text.len(), |n| start + n);
                    let name = String::from_utf8_lossy(&text[start..end]).into_owned();
                    match name.strip_prefix(VDE_VAR).map(str::parse::<u32>) {
                        Some(Ok(vlan)) => s.vlans.push(vlan),
                        Some(Err(_)) => {}
                        None if !PER_RUN_VARS.contains(&name.as_str()) => s.vars.push(name),
                        None => {}
                    }
                    i = end;
                    continue;
                }
            }
            i += 1;
        }
    }
    for v in [&mut s.paths, &mut s.vars] {
        v.sort();
        v.dedup();
    }
    s.vlans.sort_unstable();
    s.vlans.dedup();
    s
}

/// Everything a machine's own hash covers (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInputs {
    pub command: String,
    /// The start script's bytes, when the command is a readable script.
    pub script: Option<Vec<u8>>,
    pub files: Vec<(String, FileId)>,
    pub env: Vec<(String, Option<String>)>,
    pub vlans: Vec<u32>,
}

/// What ntd itself contributes: the machine's identity and the shape of its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity<'a> {
    pub name: &'a str,
    /// Position of the machine in the run (its number).
    pub index: usize,
    /// The appended arguments without their per-run paths (e.g. `no-reboot nographic vmgenid`).
    pub args_shape: &'a str,
}

/// The own hash of a machine (pure).
pub fn own_hash(inputs: &KeyInputs, id: &Identity<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.field(format!("ntd-checkpoint {}", super::FORMAT_VERSION).as_bytes());
    h.field(id.name.as_bytes());
    h.field(id.index.to_string().as_bytes());
    h.field(id.args_shape.as_bytes());
    h.field(inputs.command.as_bytes());
    match &inputs.script {
        Some(bytes) => h.field(bytes),
        None => h.field(b"(no script)"),
    }
    for (path, file) in &inputs.files {
        h.field(path.as_bytes());
        file.hash_into(&mut h);
    }
    for (name, value) in &inputs.env {
        h.field(name.as_bytes());
        match value {
            Some(v) => h.field(format!("={v}").as_bytes()),
            None => h.field(b"(unset)"),
        }
    }
    for v in &inputs.vlans {
        h.field(v.to_string().as_bytes());
    }
    h.finish()
}

/// A machine's checkpoint key: its own hash and, per vlan it joins, the own hashes of the
/// other machines of the run on that vlan (pure). 32 hex digits.
pub fn machine_key(own: &[u8; 32], vlans: &[u32], peers: &[(u32, [u8; 32])]) -> String {
    let mut h = Sha256::new();
    h.field(own);
    for v in vlans {
        let mut on_vlan: Vec<&[u8; 32]> = peers
            .iter()
            .filter(|(pv, p)| pv == v && p != own)
            .map(|(_, p)| p)
            .collect();
        on_vlan.sort();
        h.field(v.to_string().as_bytes());
        for p in on_vlan {
            h.field(p);
        }
    }
    hex(&h.finish()[..16])
}

/// Identities of files already looked at in this run (several machines name one kernel).
#[derive(Debug, Default)]
pub struct FileCache(HashMap<String, Option<FileId>>);

fn identify(path: &str) -> io::Result<Option<FileId>> {
    if path.starts_with("/nix/store/") {
        return Ok(Path::new(path).exists().then_some(FileId::Store));
    }
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(20) => {
            return Ok(None); // missing, or a path through a file (ENOTDIR)
        }
        Err(e) => return Err(e),
    };
    let ft = meta.file_type();
    if !ft.is_file() {
        let kind = if ft.is_dir() { "directory" } else { "special" };
        return Ok(Some(FileId::Other(kind)));
    }
    if meta.len() > CONTENT_LIMIT {
        return Ok(Some(FileId::Stat {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }));
    }
    let mut f = std::fs::File::open(path)?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok(Some(FileId::Content {
        len,
        crc: h.finalize(),
    }))
}

/// Read what a start command names (the script, the files, the environment) into
/// [`KeyInputs`]. `env` looks up a variable of the environment the start script will get.
/// Whether the start command or the script it runs adds a vmgenid device itself (QEMU takes
/// one; ntd then adds none).
pub fn names_vmgenid(command: &str) -> bool {
    let program = command.split_whitespace().next().unwrap_or_default();
    let script = match std::fs::metadata(program) {
        Ok(m) if m.is_file() && m.len() <= SCRIPT_LIMIT => std::fs::read(program).ok(),
        _ => None,
    };
    let names = |t: &[u8]| memchr::memmem::find(t, b"vmgenid").is_some();
    names(command.as_bytes()) || script.as_deref().is_some_and(names)
}

pub fn gather(
    command: &str,
    env: &dyn Fn(&str) -> Option<String>,
    cache: &mut FileCache,
) -> io::Result<KeyInputs> {
    let program = command.split_whitespace().next().unwrap_or_default();
    let script = match std::fs::metadata(program) {
        Ok(m) if m.is_file() && m.len() <= SCRIPT_LIMIT => Some(std::fs::read(program)?),
        _ => None,
    };
    let mut texts: Vec<&[u8]> = vec![command.as_bytes()];
    if let Some(s) = &script {
        texts.push(s);
    }
    let found = scan(&texts);
    let mut files = Vec::new();
    for p in &found.paths {
        let id = match cache.0.get(p) {
            Some(id) => id.clone(),
            None => {
                let id = identify(p)?;
                cache.0.insert(p.clone(), id.clone());
                id
            }
        };
        if let Some(id) = id {
            files.push((p.clone(), id));
        }
    }
    let env = found.vars.iter().map(|v| (v.clone(), env(v))).collect();
    Ok(KeyInputs {
        command: command.to_owned(),
        script,
        files,
        env,
        vlans: found.vlans,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NIXOS_LIKE: &str = r#"#!/nix/store/abc-bash-5.2/bin/bash
export PATH=/nix/store/def-coreutils/bin${PATH:+:}$PATH
NIX_DISK_IMAGE=$(readlink -f "${NIX_DISK_IMAGE:-./machine.qcow2}")
exec /nix/store/ghi-qemu-8.2.0/bin/qemu-kvm -cpu max \
    -drive file=/nix/store/jkl-store.img,format=raw,readonly=on \
    -netdev vde,id=vlan1,sock="$QEMU_VDE_SOCKET_1" -netdev vde,id=vlan2,sock="${QEMU_VDE_SOCKET_2}" \
    -virtfs local,path="${SHARED_DIR}",mount_tag=shared -kernel ${NIXPKGS_QEMU_KERNEL_m:-/nix/store/mno-system/kernel} \
    -append "$(cat /nix/store/mno-system/kernel-params) $QEMU_KERNEL_PARAMS" $QEMU_OPTS "$@"
"#;

    #[test]
    fn scan_finds_paths_vars_and_vlans_of_a_nixos_like_script() {
        let s = scan(&[NIXOS_LIKE.as_bytes()]);
        assert_eq!(
            s.paths,
            [
                "/nix/store/abc-bash-5.2/bin/bash",
                "/nix/store/def-coreutils/bin",
                "/nix/store/ghi-qemu-8.2.0/bin/qemu-kvm",
                "/nix/store/jkl-store.img",
                "/nix/store/mno-system/kernel",
                "/nix/store/mno-system/kernel-params",
            ]
        );
        assert_eq!(
            s.vars,
            [
                "NIXPKGS_QEMU_KERNEL_m",
                "NIX_DISK_IMAGE",
                "PATH",
                "QEMU_KERNEL_PARAMS",
                "QEMU_OPTS"
            ]
        );
        assert_eq!(s.vlans, [1, 2]);
    }

    #[test]
    fn scan_ignores_relative_paths_urls_and_per_run_variables() {
        let s = scan(&[b"cd ./x; curl http://host/a; echo $TMPDIR ${USE_TMPDIR} $1 $@ a/b"]);
        assert!(s.paths.is_empty(), "{:?}", s.paths);
        assert!(s.vars.is_empty(), "{:?}", s.vars);
    }

    fn inputs() -> KeyInputs {
        KeyInputs {
            command: "/x/run-m-vm".into(),
            script: Some(b"exec qemu".to_vec()),
            files: vec![("/x/kernel".into(), FileId::Content { len: 3, crc: 7 })],
            env: vec![("QEMU_OPTS".into(), None)],
            vlans: vec![1],
        }
    }

    const ID: Identity<'static> = Identity {
        name: "m",
        index: 0,
        args_shape: "no-reboot nographic vmgenid",
    };

    #[test]
    fn own_hash_changes_with_every_input() {
        let base = own_hash(&inputs(), &ID);
        assert_eq!(base, own_hash(&inputs(), &ID));
        let mut changed = Vec::new();
        let mut i = inputs();
        i.script = Some(b"exec qemu -m 2G".to_vec());
        changed.push(own_hash(&i, &ID));
        let mut i = inputs();
        i.files[0].1 = FileId::Content { len: 3, crc: 8 };
        changed.push(own_hash(&i, &ID));
        let mut i = inputs();
        i.env[0].1 = Some("-m 2G".into());
        changed.push(own_hash(&i, &ID));
        let mut i = inputs();
        i.vlans = vec![2];
        changed.push(own_hash(&i, &ID));
        changed.push(own_hash(&inputs(), &Identity { name: "n", ..ID }));
        changed.push(own_hash(&inputs(), &Identity { index: 1, ..ID }));
        changed.push(own_hash(
            &inputs(),
            &Identity {
                args_shape: "nographic vmgenid",
                ..ID
            },
        ));
        for (n, c) in changed.iter().enumerate() {
            assert_ne!(*c, base, "change {n} did not change the hash");
        }
    }

    #[test]
    fn machine_key_depends_on_vlan_peers_only() {
        let own = [1u8; 32];
        let peer = [2u8; 32];
        let other = [3u8; 32];
        let alone = machine_key(&own, &[1], &[(1, own)]);
        let with_peer = machine_key(&own, &[1], &[(1, own), (1, peer)]);
        assert_ne!(alone, with_peer);
        // A machine on another vlan does not matter; the order of peers does not either.
        assert_eq!(
            with_peer,
            machine_key(&own, &[1], &[(2, other), (1, peer), (1, own)])
        );
        assert_eq!(with_peer.len(), 32);
    }

    #[test]
    fn gather_identifies_small_files_by_content_and_skips_missing_ones() {
        let dir = std::env::temp_dir().join(format!("ntd-key-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kernel = dir.join("kernel");
        std::fs::write(&kernel, b"kernel v1").unwrap();
        let script = dir.join("run-m-vm");
        std::fs::write(
            &script,
            format!(
                "exec qemu -kernel {} -initrd {}/missing $QEMU_OPTS",
                kernel.display(),
                dir.display()
            ),
        )
        .unwrap();
        let env = |v: &str| (v == "QEMU_OPTS").then(|| "-m 1G".to_owned());
        let cmd = script.display().to_string();
        let a = gather(&cmd, &env, &mut FileCache::default()).unwrap();
        assert_eq!(a.env, [("QEMU_OPTS".to_owned(), Some("-m 1G".to_owned()))]);
        let names: Vec<&str> = a.files.iter().map(|(p, _)| p.as_str()).collect();
        assert!(names.contains(&kernel.to_str().unwrap()), "{names:?}");
        assert!(!names.iter().any(|n| n.ends_with("missing")), "{names:?}");
        std::fs::write(&kernel, b"kernel v2").unwrap();
        let b = gather(&cmd, &env, &mut FileCache::default()).unwrap();
        assert_ne!(own_hash(&a, &ID), own_hash(&b, &ID));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
