//! Unit tests of the checkpoint directory ([`super`]): commits, checksums, locks, eviction, sweeps.

use super::*;
use crate::checkpoint::manifest::tests_support::sample_manifest;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "ntd-store-{tag}-{}-{}",
            std::process::id(),
            random_hex()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Write an entry with a `ram` file of `ram_len` bytes; returns its manifest.
fn write_entry(store: &Store, key: &str, cut: &str, ram_len: usize) -> Manifest {
    let tmp = store.begin().unwrap();
    let data: Vec<u8> = (0..ram_len).map(|i| (i % 251) as u8).collect();
    std::fs::write(tmp.join("src"), &data).unwrap();
    let rec = copy_with_crc(&tmp.join("src"), &tmp.join("ram"), "ram").unwrap();
    std::fs::remove_file(tmp.join("src")).unwrap();
    let mut m = sample_manifest();
    m.key = key.to_owned();
    m.cut = cut.to_owned();
    m.files = vec![rec];
    m.disks.clear();
    assert!(store.commit(&tmp, &m).unwrap());
    m
}

const KEY_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const KEY_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

#[test]
fn committed_entry_is_found_and_loads_with_its_manifest() {
    let d = TempDir::new("commit");
    let store = Store::open(&d.0, u64::MAX).unwrap();
    let m = write_entry(&store, KEY_A, "01", 1000);
    let found = store.find(KEY_A);
    assert_eq!(found.len(), 1);
    let (loaded, _lock) = store.load(&found[0]).unwrap();
    assert_eq!(loaded, m);
    assert!(store.find(KEY_B).is_empty());
}

#[test]
fn second_commit_of_the_same_entry_loses_and_leaves_nothing_behind() {
    let d = TempDir::new("race");
    let store = Store::open(&d.0, u64::MAX).unwrap();
    let m = write_entry(&store, KEY_A, "01", 10);
    let tmp = store.begin().unwrap();
    std::fs::write(tmp.join("ram"), b"other").unwrap();
    assert!(!store.commit(&tmp, &m).unwrap());
    assert!(!tmp.exists());
    let names: Vec<String> = std::fs::read_dir(&d.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [format!("{KEY_A}.01")]);
}

#[test]
fn checksum_in_small_steps_matches_the_record_and_detects_damage() {
    let d = TempDir::new("crc");
    let store = Store::open(&d.0, u64::MAX).unwrap();
    let m = write_entry(&store, KEY_A, "01", 3 * CHUNK + 17);
    let entry = &store.find(KEY_A)[0];
    let ram = entry.dir.join("ram");
    let run = |path: &Path| {
        let mut c = Checksum::open(path).unwrap();
        let mut steps = 0;
        loop {
            steps += 1;
            if let ChecksumStep::Done { len, crc } = c.step(CHUNK).unwrap() {
                return (Checksum::check(&m.files[0], len, crc), steps);
            }
        }
    };
    let (ok, steps) = run(&ram);
    assert_eq!(ok, Ok(()));
    assert!(steps >= 4, "{steps} steps: the budget was not respected");
    // One flipped byte, then a truncation.
    let mut bytes = std::fs::read(&ram).unwrap();
    bytes[CHUNK + 5] ^= 1;
    std::fs::write(&ram, &bytes).unwrap();
    assert!(run(&ram).0.unwrap_err().contains("corrupt"));
    bytes.truncate(100);
    std::fs::write(&ram, &bytes).unwrap();
    assert!(run(&ram).0.unwrap_err().contains("truncated"));
}

#[test]
fn copy_verified_refuses_a_damaged_file_and_removes_the_copy() {
    let d = TempDir::new("copy");
    let store = Store::open(&d.0, u64::MAX).unwrap();
    let m = write_entry(&store, KEY_A, "01", 5000);
    let entry = store.find(KEY_A)[0].dir.clone();
    let dst = d.0.join("copy");
    copy_verified(&entry, &m.files[0], &dst).unwrap();
    assert_eq!(std::fs::metadata(&dst).unwrap().len(), 5000);
    std::fs::write(entry.join("ram"), b"short").unwrap();
    assert!(copy_verified(&entry, &m.files[0], &dst).is_err());
    assert!(!dst.exists());
}

#[test]
fn eviction_removes_least_recently_used_first_and_spares_locked_and_kept_entries() {
    let d = TempDir::new("evict");
    let store = Store::open(&d.0, u64::MAX).unwrap();
    write_entry(&store, KEY_A, "01", 64 * 1024);
    write_entry(&store, KEY_A, "02", 64 * 1024);
    write_entry(&store, KEY_B, "03", 64 * 1024);
    let age = |name: &str, secs: u64| {
        let t = SystemTime::now() - Duration::from_secs(secs);
        let f = File::open(d.0.join(name)).unwrap();
        f.set_modified(t).unwrap();
    };
    age(&format!("{KEY_A}.01"), 300);
    age(&format!("{KEY_A}.02"), 200);
    age(&format!("{KEY_B}.03"), 100);
    let one = store.entries()[0].size;
    let small = Store::open(&d.0, one + one / 2).unwrap();
    // A reader holds the oldest: it stays, the next oldest goes; the kept one stays too.
    let (_, lock) = small.load(&small.find(KEY_A)[1]).unwrap();
    let kept = d.0.join(format!("{KEY_B}.03"));
    let removed = small.evict(std::slice::from_ref(&kept));
    let names: Vec<&str> = removed.iter().map(|e| e.cut.as_str()).collect();
    assert_eq!(names, ["02"]);
    drop(lock);
    let removed = small.evict(std::slice::from_ref(&kept));
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].cut, "01");
    assert!(kept.exists());
}

#[test]
fn open_sweeps_temporary_directories_of_dead_runs_only() {
    let d = TempDir::new("sweep");
    // pid 0x7fffffff cannot exist; our own pid does.
    let dead = d.0.join(".tmp-2147483647-abc");
    let ours = d.0.join(format!(".tmp-{}-abc", std::process::id()));
    std::fs::create_dir_all(&dead).unwrap();
    std::fs::create_dir_all(&ours).unwrap();
    Store::open(&d.0, u64::MAX).unwrap();
    assert!(!dead.exists());
    assert!(ours.exists());
}

#[test]
fn open_fails_clearly_on_a_file_or_unwritable_directory() {
    let d = TempDir::new("bad");
    let file = d.0.join("f");
    std::fs::write(&file, b"x").unwrap();
    let e = Store::open(&file, 1).unwrap_err();
    assert!(e.contains(&file.display().to_string()), "{e}");
}

#[test]
fn entry_names_are_parsed_strictly() {
    assert_eq!(
        parse_entry_name(&format!("{KEY_A}.0f")),
        Some((KEY_A, "0f"))
    );
    assert_eq!(parse_entry_name(".tmp-1-abc"), None);
    assert_eq!(parse_entry_name(&format!("{KEY_A}.")), None);
    assert_eq!(parse_entry_name("abc.01"), None);
    assert_eq!(parse_entry_name(&format!("{KEY_A}.zz")), None);
}

#[test]
fn a_read_only_store_loads_entries_but_writes_and_evicts_nothing() {
    let d = TempDir::new("ro");
    let writable = Store::open(&d.0, 1).unwrap();
    assert!(!writable.read_only());
    write_entry(&writable, KEY_A, "01", 1000);
    let ro = Store {
        dir: writable.dir().to_owned(),
        max_size: 1,
        read_only: true,
    };
    let found = ro.find(KEY_A);
    assert_eq!(found.len(), 1);
    assert!(ro.load(&found[0]).is_ok());
    assert!(ro.begin().is_err());
    assert!(ro.evict(&[]).is_empty(), "over the cap, but read-only");
    assert_eq!(ro.find(KEY_A).len(), 1);
}

#[test]
fn sample_identity_covers_the_length_and_both_ends() {
    let d = TempDir::new("sample");
    let f = d.0.join("img");
    let mut bytes = vec![0u8; 3 << 20];
    std::fs::write(&f, &bytes).unwrap();
    let base = sample_identity(&f).unwrap();
    assert_eq!(base.0, 3 << 20);
    for at in [0, bytes.len() - 1] {
        bytes[at] ^= 1;
        std::fs::write(&f, &bytes).unwrap();
        assert_ne!(sample_identity(&f).unwrap(), base, "byte {at} changed");
        bytes[at] ^= 1;
    }
    std::fs::write(&f, &bytes[..100]).unwrap();
    assert_eq!(
        sample_identity(&f).unwrap().0,
        100,
        "a small file is read whole"
    );
}
