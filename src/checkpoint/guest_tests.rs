//! Unit tests of the guest commands around a save and a restore ([`super`]): their text and the parsers of their output.

use super::*;

fn m(tag: &str, dir: &str) -> Mount9p {
    Mount9p {
        tag: tag.into(),
        dir: dir.into(),
        options: "rw,relatime,msize=16384,trans=virtio".into(),
    }
}

#[test]
fn mount_list_is_parsed_with_proc_mounts_escapes_and_the_clock() {
    let out = b"ntd-9p shared /tmp/my\\040share rw,sync,trans=virtio\n\
                ntd-9p xchg /tmp/xchg rw,msize=16384\n\
                unrelated noise\n\
                ntd-now 1796593454123456\n";
    let l = parse_mount_list(out);
    assert_eq!(l.now_us, Some(1_796_593_454_123_456));
    assert_eq!(l.mounts.len(), 2);
    assert_eq!(l.mounts[0].dir, "/tmp/my share");
    assert_eq!(l.mounts[0].options, "rw,sync,trans=virtio");
    assert_eq!(l.mounts[1].tag, "xchg");
    // A backslash that is not an octal escape stays.
    assert_eq!(unescape_mounts_field("a\\x\\1"), "a\\x\\1");
}

#[test]
fn managed_shares_are_unmounted_a_store_or_foreign_share_is_impossible() {
    let ok = [m("shared", "/tmp/shared"), m("xchg", "/tmp/xchg")];
    assert_eq!(classify_mounts(&ok), MountVerdict::Unmount(ok.to_vec()));
    assert_eq!(classify_mounts(&[]), MountVerdict::Unmount(vec![]));
    let MountVerdict::Impossible(why) =
        classify_mounts(&[m("xchg", "/tmp/xchg"), m("nix-store", "/nix/.ro-store")])
    else {
        panic!("a 9p store must make the checkpoint impossible");
    };
    assert!(why.contains("useNixStoreImage"), "{why}");
    let MountVerdict::Impossible(why) = classify_mounts(&[m("data", "/srv")]) else {
        panic!("a foreign share must make the checkpoint impossible");
    };
    assert!(why.contains("'data'") && why.contains("/srv"), "{why}");
}

#[test]
fn umount_command_quotes_and_unmounts_inner_directories_first() {
    let c = umount_command(&[m("a", "/tmp/x"), m("b", "/tmp/x/in ner")]);
    assert_eq!(c, "umount -- '/tmp/x/in ner' '/tmp/x'");
}

#[test]
fn mount_command_reports_each_share_that_fails() {
    let c = mount_command(&[m("shared", "/tmp/shared")]);
    assert!(
        c.contains("mount -t 9p -o 'rw,relatime,msize=16384,trans=virtio' 'shared' '/tmp/shared'"),
        "{c}"
    );
    assert!(c.contains("|| echo ntd-mount-failed 'shared'"), "{c}");
}

#[test]
fn fixup_command_sets_the_clock_seeds_the_pool_and_mounts() {
    let c = fixup_command(-2_500_000, &[0x00, 0xff, 0x27], &[m("xchg", "/tmp/xchg")]);
    assert!(
        c.starts_with("t=${EPOCHREALTIME/./}; t=$(( t + (-2500000) ));"),
        "{c}"
    );
    assert!(c.contains("printf '\\x00\\xff\\x27' >/dev/urandom"), "{c}");
    assert!(c.contains("QEMUVGID:00"), "{c}");
    assert!(c.contains("mount -t 9p -o 'rw,"), "{c}");
    assert!(c.ends_with("'xchg'; }; :"), "{c}");
    assert_eq!(
        parse_mount_list(b"ntd-now 12\n").now_us,
        Some(12),
        "NOW_COMMAND's answer is read by the same parser: {NOW_COMMAND}"
    );
    // The random bytes travel as escapes: the line is printable ASCII whatever they are.
    assert!(c.bytes().all(|b| (0x20..0x7f).contains(&b)), "{c:?}");
}

#[test]
fn fixup_report_is_parsed() {
    let r = parse_fixup(
        b"ntd-clock-failed\nntd-clock-whole-seconds\nntd-no-vmgenid\nntd-mount-failed shared\nntd-now 1000000\n",
    );
    assert_eq!(
        r,
        FixupReport {
            now_us: Some(1_000_000),
            clock_failed: true,
            whole_seconds: true,
            no_vmgenid: true,
            mount_failed: vec!["shared".into()],
        }
    );
    assert_eq!(parse_fixup(b"garbage").now_us, None);
}

#[test]
fn clock_correction_ignores_small_errors_and_undoes_large_ones() {
    assert_eq!(clock_correction(CLOCK_TOLERANCE_US), None);
    assert_eq!(clock_correction(-CLOCK_TOLERANCE_US), None);
    assert_eq!(clock_correction(-300_000), Some(300_000));
    assert_eq!(clock_correction(2_000_000), Some(-2_000_000));
}
