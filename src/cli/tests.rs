//! Unit tests of [`super`], byte by byte (kept beside the module to keep it short).

use super::config::parse_iso_or_seconds;
use super::*;
use std::collections::HashMap;

struct MapEnv(HashMap<&'static str, &'static str>);
impl Env for MapEnv {
    fn get(&self, key: &str) -> Option<String> {
        self.0.get(key).map(|s| s.to_string())
    }
}

fn args(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

fn no_env() -> MapEnv {
    MapEnv(HashMap::new())
}

/// A configuration file in a directory of its own, removed with it when the test ends.
struct TempConfig(PathBuf);

impl std::ops::Deref for TempConfig {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn write_config(body: &str) -> TempConfig {
    // One directory per call: tests run in parallel, and two bodies may have one length.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("ntd-cli-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("c.json");
    std::fs::write(&p, body).unwrap();
    TempConfig(p)
}

#[test]
fn newest_form_reads_config_and_overrides_script() {
    let p = write_config(
        r#"{"vms":{"a":{"name":"a","start_script":"/x/run-a-vm"}},"vlans":[1,2,1],"global_timeout":60,"test_script":"/t"}"#,
    );
    let o = parse(
        &args(&["-c", p.to_str().unwrap(), "--test-script", "/u", "-K"]),
        &no_env(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(o.vms[0].name, "a");
    assert_eq!(o.vlans, vec![1, 2]);
    assert_eq!(o.global_timeout, Duration::from_secs(60));
    assert_eq!(o.test_script, Some(PathBuf::from("/u")));
    assert!(o.keep_machine_state);
}

#[test]
fn prefix_abbreviation_and_equals_forms_resolve() {
    let p = write_config(r#"{"vms":{},"test_script":"/t"}"#);
    let o = parse(
        &args(&[
            &format!("--config={}", p.display()),
            "--debug-hook=attach-cmd",
            "--log-level=debug",
        ]),
        &no_env(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(o.debug_hook.as_deref(), Some("attach-cmd"));
    assert_eq!(o.log_level, Level::Debug);
}

#[test]
fn non_ascii_short_options_are_unknown_not_a_crash() {
    for a in ["-é", "-éx", "-\u{1F600}", "-ü=1"] {
        let e = parse(&args(&[a]), &no_env()).unwrap_err();
        assert!(e.0.contains("unrecognized arguments"), "{a}: {}", e.0);
    }
}

#[test]
fn start_scripts_without_names_derive_names_from_the_scripts() {
    let o = parse(
        &args(&["t.py", "--vm-start-scripts", "/s/run-web-vm", "/s/other"]),
        &no_env(),
    )
    .unwrap()
    .unwrap();
    let names: Vec<_> = o.vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["web", "machine"]);
    assert!(parse(&args(&["t.py", "--vm-names", "a"]), &no_env()).is_err());
}

#[test]
fn huge_or_negative_global_timeouts_are_errors_not_overflows() {
    for t in ["1e300", "-5", "inf", "nan"] {
        let e = parse(
            &args(&[
                "t.py",
                "--start-scripts",
                "/s/run-a-vm",
                "--global-timeout",
                t,
            ]),
            &no_env(),
        )
        .unwrap_err();
        assert!(e.0.contains("--global-timeout"), "{t}: {}", e.0);
    }
    let p = write_config(r#"{"vms":{},"test_script":"/t","global_timeout":1e300}"#);
    let e = parse(&args(&["-c", p.to_str().unwrap()]), &no_env()).unwrap_err();
    assert!(e.0.contains("out of range"), "{}", e.0);
}

#[test]
fn ambiguous_prefix_is_an_error() {
    let e = parse(&args(&["--vm", "x"]), &no_env()).unwrap_err();
    assert!(e.0.contains("ambiguous"), "{}", e.0);
}

#[test]
fn mid_form_pairs_names_and_scripts_with_positional_script() {
    let o = parse(
        &args(&[
            "--vm-names",
            "a",
            "b",
            "--vm-start-scripts",
            "/s/a",
            "/s/b",
            "--vlans",
            "1",
            "--global-timeout",
            "30",
            "--",
            "/script.py",
        ]),
        &no_env(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(o.vms.len(), 2);
    assert_eq!(o.vms[1].start_script, "/s/b");
    assert_eq!(o.test_script, Some(PathBuf::from("/script.py")));
}

#[test]
fn legacy_env_vars_supply_defaults() {
    let env = MapEnv(HashMap::from([
        (
            "startScripts",
            "/nix/store/a/bin/run-server-vm /nix/store/b/bin/run-client-vm",
        ),
        ("vlans", "1 2"),
        ("globalTimeout", "120"),
        ("testScript", "/t.py"),
    ]));
    let o = parse(&[], &env).unwrap().unwrap();
    assert_eq!(o.vms[0].name, "server");
    assert_eq!(o.vms[1].name, "client");
    assert_eq!(o.vlans, vec![1, 2]);
    assert_eq!(o.global_timeout, Duration::from_secs(120));
    assert!(o.legacy_state_flag);
}

#[test]
fn missing_required_configuration_is_reported() {
    let e = parse(&args(&["script.py"]), &no_env()).unwrap_err();
    assert!(e.0.contains("required"), "{}", e.0);
}

#[test]
fn bad_output_directory_is_rejected() {
    let e = parse(&args(&["-o", "/nonexistent/dir", "--vm-names"]), &no_env()).unwrap_err();
    assert!(e.0.contains("not a writeable directory"), "{}", e.0);
}

#[test]
fn containers_in_the_config_are_read_and_names_must_be_unique_across_kinds() {
    let p = write_config(
        r#"{"vms":{"a":{"name":"a","start_script":"/x/run-a-vm"}},"containers":{"c":{"name":"c","start_script":"/x/run-c-nspawn","display_targets":[]}},"vlans":[1],"test_script":"/t"}"#,
    );
    let o = parse(&args(&["-c", p.to_str().unwrap()]), &no_env())
        .unwrap()
        .unwrap();
    assert_eq!(o.containers.len(), 1);
    assert_eq!(
        (
            o.containers[0].name.as_str(),
            o.containers[0].start_script.as_str()
        ),
        ("c", "/x/run-c-nspawn")
    );
    let p = write_config(
        r#"{"vms":{"a":{"name":"a","start_script":"/x/run-a-vm"}},"containers":{"a":{"name":"a","start_script":"/x/run-a-nspawn"}},"test_script":"/t"}"#,
    );
    let e = parse(&args(&["-c", p.to_str().unwrap()]), &no_env()).unwrap_err();
    assert_eq!(e.0, "machine name 'a' is both a VM and a container");
    let p = write_config(r#"{"containers":[],"test_script":"/t"}"#);
    let e = parse(&args(&["-c", p.to_str().unwrap()]), &no_env()).unwrap_err();
    assert!(e.0.contains("\"containers\" must be an object"), "{}", e.0);
}

#[test]
fn containers_of_the_mid_generation_pair_up_or_take_their_names_from_the_scripts() {
    let o = parse(
        &args(&[
            "t.py",
            "--vm-names",
            "v",
            "--vm-start-scripts",
            "/s/run-v-vm",
            "--container-names",
            "c1",
            "c2",
            "--container-start-scripts",
            "/s/x",
            "/s/y",
        ]),
        &no_env(),
    )
    .unwrap()
    .unwrap();
    let names: Vec<_> = o.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!((o.vms.len(), names), (1, vec!["c1", "c2"]));
    let env = MapEnv(HashMap::from([
        (
            "containerStartScripts",
            "/s/run-web-1-nspawn /s/run-db-nspawn",
        ),
        ("testScript", "/t"),
    ]));
    let o = parse(&args(&[]), &env).unwrap().unwrap();
    let names: Vec<_> = o.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["web-1", "db"]);
    assert!(o.vms.is_empty());
    let e = parse(
        &args(&["t.py", "--container-start-scripts", "/s/start"]),
        &no_env(),
    )
    .unwrap_err();
    assert!(e.0.contains("expected run-<name>-nspawn"), "{}", e.0);
    let e = parse(
        &args(&[
            "t.py",
            "--container-names",
            "a",
            "b",
            "--container-start-scripts",
            "/s/x",
        ]),
        &no_env(),
    )
    .unwrap_err();
    assert!(e.0.contains("must pair up"), "{}", e.0);
}

#[test]
fn iso_durations_parse() {
    assert_eq!(parse_iso_or_seconds("PT3600S"), Some(3600.0));
    assert_eq!(parse_iso_or_seconds("P1DT1H"), Some(90000.0));
    assert_eq!(parse_iso_or_seconds("12.5"), Some(12.5));
    assert_eq!(parse_iso_or_seconds("PTx"), None);
}

#[test]
fn interactive_last_flag_wins() {
    let p = write_config(r#"{"vms":{}}"#);
    let c = p.to_str().unwrap();
    let o = parse(&args(&["-c", c, "-I"]), &no_env()).unwrap().unwrap();
    assert!(o.interactive);
    let o = parse(
        &args(&["-c", c, "-I", "--no-interactive", "--test-script", "/t"]),
        &no_env(),
    )
    .unwrap()
    .unwrap();
    assert!(!o.interactive);
}

#[test]
fn ssh_backdoor_flags_and_keys_are_read() {
    let p = write_config(
        r#"{"vms":{},"test_script":"/t","enable_ssh_backdoor":true,"force_accel":true}                              "#,
    );
    let o = parse(
        &args(&[
            "-c",
            p.to_str().unwrap(),
            "--dump-vsocks=2",
            "--debug-hook=/x/attach",
        ]),
        &no_env(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(o.dump_vsocks, Some(2));
    assert!(o.enable_ssh_backdoor && o.force_accel);
    assert_eq!(o.debug_hook.as_deref(), Some("/x/attach"));
    let o = parse(
        &args(&["-c", p.to_str().unwrap(), "--dump-vsocks", "7"]),
        &no_env(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(o.dump_vsocks, Some(7));
    let e = parse(
        &args(&["-c", p.to_str().unwrap(), "--dump-vsocks", "x"]),
        &no_env(),
    );
    assert!(
        matches!(&e, Err(CliError(m)) if m.contains("--dump-vsocks")),
        "{e:?}"
    );
    let bad = write_config(
        r#"{"vms":{},"test_script":"/t","enable_ssh_backdoor":"yes"}                                   "#,
    );
    assert!(parse(&args(&["-c", bad.to_str().unwrap()]), &no_env()).is_err());
}

#[test]
fn checkpoints_come_from_env_then_config_then_command_line() {
    let env = MapEnv(HashMap::from([
        ("NTD_CHECKPOINTS", "/env/ck"),
        ("NTD_CHECKPOINTS_MAX_SIZE", "1G"),
    ]));
    let plain = write_config(
        r#"{"vms":{"a":{"name":"a","start_script":"/x/run-a-vm"}},"test_script":"/t"}"#,
    );
    let c = plain.to_str().unwrap();
    let o = parse(&args(&["-c", c]), &env).unwrap().unwrap();
    assert_eq!(o.checkpoints, Some(PathBuf::from("/env/ck")));
    assert_eq!(o.checkpoints_max_size, 1 << 30);
    let o = parse(&args(&["-c", c]), &no_env()).unwrap().unwrap();
    assert_eq!(o.checkpoints, None);
    assert_eq!(o.checkpoints_max_size, crate::checkpoint::DEFAULT_MAX_SIZE);

    let with = write_config(
        r#"{"vms":{"a":{"name":"a","start_script":"/x/run-a-vm"}},"test_script":"/t","checkpoints":"/cfg/ck","checkpoints_max_size":"500M"}"#,
    );
    let c = with.to_str().unwrap();
    let o = parse(&args(&["-c", c]), &env).unwrap().unwrap();
    assert_eq!(o.checkpoints, Some(PathBuf::from("/cfg/ck")));
    assert_eq!(o.checkpoints_max_size, 500 << 20);
    let o = parse(
        &args(&[
            "-c",
            c,
            "--checkpoints",
            "/cli/ck",
            "--checkpoints-max-size=2g",
        ]),
        &env,
    )
    .unwrap()
    .unwrap();
    assert_eq!(o.checkpoints, Some(PathBuf::from("/cli/ck")));
    assert_eq!(o.checkpoints_max_size, 2 << 30);
}

#[test]
fn bad_checkpoint_sizes_are_errors() {
    for bad in ["lots", "-5G", "1e400", "12Q", ""] {
        let e = parse(
            &args(&[
                "--start-scripts",
                "/x/run-a-vm",
                "--checkpoints-max-size",
                bad,
                "/t",
            ]),
            &no_env(),
        );
        assert!(e.is_err(), "{bad:?} accepted");
    }
    assert_eq!(parse_size("1.5GiB"), Some(3 << 29));
    assert_eq!(parse_size("64k"), Some(65536));
    assert_eq!(parse_size("4096"), Some(4096));
    assert_eq!(parse_size("8 GB"), Some(8 << 30));
}

#[test]
fn keep_failed_comes_from_the_environment_or_the_command_line() {
    let cfg = write_config(
        r#"{"vms":{"a":{"name":"a","start_script":"/x/run-a-vm"}},"test_script":"/t"}"#,
    );
    let c = cfg.to_str().unwrap();
    let o = parse(&args(&["-c", c]), &no_env()).unwrap().unwrap();
    assert_eq!(o.keep_failed, None);
    assert_eq!(o.resume, None, "only `ntd resume` sets it");
    let env = MapEnv(HashMap::from([("NTD_KEEP_FAILED", "/env/capsule")]));
    let o = parse(&args(&["-c", c]), &env).unwrap().unwrap();
    assert_eq!(o.keep_failed, Some(PathBuf::from("/env/capsule")));
    let o = parse(&args(&["-c", c, "--keep-failed", "/cli/capsule"]), &env)
        .unwrap()
        .unwrap();
    assert_eq!(o.keep_failed, Some(PathBuf::from("/cli/capsule")));
}
