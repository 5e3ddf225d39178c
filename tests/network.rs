//! End-to-end tests of guest networks through ntd's in-process switch: real tiny guests on
//! vlans, `block()`/`unblock()`, pcap capture, and Debian's real `vde_plug` talking to a guest.

// Tests may unwrap and panic: a failing assertion is their report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(300);

/// A node: name, vlans, index (node number, as NixOS: position in the sorted names).
struct Node {
    name: &'static str,
    vlans: &'static [u32],
    index: u32,
}

const fn node(name: &'static str, vlans: &'static [u32], index: u32) -> Node {
    Node { name, vlans, index }
}

/// Two nodes on vlan 1.
fn alice_and_bob() -> [Node; 2] {
    [node("alice", &[1], 1), node("bob", &[1], 2)]
}

fn hosts(nodes: &[Node]) -> String {
    nodes
        .iter()
        .filter_map(|n| {
            Some(format!(
                "{}:192.168.{}.{}",
                n.name,
                n.vlans.first()?,
                n.index
            ))
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn network(tag: &str, nodes: &[Node], script: &str, extra_args: &[&str]) -> (TestDir, RunResult) {
    let dir = TestDir::new(tag);
    let hosts = hosts(nodes);
    let mut vms = Vec::new();
    let mut vlans: Vec<u32> = Vec::new();
    for n in nodes {
        let index = n.index.to_string();
        let mut args = vec!["--index", index.as_str(), "--hosts", hosts.as_str()];
        let vl: Vec<String> = n.vlans.iter().map(|v| v.to_string()).collect();
        for v in &vl {
            args.push("--vlan");
            args.push(v);
        }
        vms.push((n.name, dir.tiny_vm(n.name, &args)));
        for v in n.vlans {
            if !vlans.contains(v) {
                vlans.push(*v);
            }
        }
    }
    let machines: Vec<(&str, &std::path::Path)> =
        vms.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let cfg = dir.config(&machines, &vlans, 240, script);
    let mut args = vec!["-c", cfg.to_str().unwrap()];
    args.extend_from_slice(extra_args);
    let r = dir.run(&args, LIMIT);
    (dir, r)
}

#[test]
fn two_guests_on_a_vlan_ping_each_other_by_name() {
    let nodes = alice_and_bob();
    let script = test_script!("network/two_guests_on_a_vlan_ping_each_other_by_name.py");
    let (dir, r) = network("ping", &nodes, script, &[]);
    r.assert_code(0);
    assert!(
        r.stderr.contains("running vlan (in-process switch"),
        "{}",
        r.log()
    );
    assert!(
        r.stderr.contains("kill vlan (in-process switch"),
        "{}",
        r.log()
    );
    dir.assert_clean();
    assert!(
        !dir.run_dir().join("vde1.ctl").exists(),
        "switch directory left behind"
    );
}

#[test]
fn guests_see_only_their_own_vlans_peers() {
    // b is on both vlans; a only on 1, c only on 2. c also gets an address in vlan 1's subnet
    // on its vlan-2 NIC: a must still not reach it (the switches are separate).
    let nodes = [
        node("a", &[1], 1),
        node("b", &[1, 2], 2),
        node("c", &[2], 3),
    ];
    let script = test_script!("network/guests_see_only_their_own_vlans_peers.py");
    let (dir, r) = network("vlans", &nodes, script, &[]);
    r.assert_code(0);
    dir.assert_clean();
}

#[test]
fn block_makes_ping_fail_and_unblock_restores_it() {
    let nodes = alice_and_bob();
    let script = test_script!("network/block_makes_ping_fail_and_unblock_restores_it.py");
    let (dir, r) = network("block", &nodes, script, &[]);
    r.assert_code(0);
    dir.assert_clean();
}

/// Read a classic pcap file: (link type, frames).
fn read_pcap(path: &std::path::Path) -> (u32, Vec<Vec<u8>>) {
    let data = std::fs::read(path).unwrap();
    assert!(data.len() >= 24, "pcap too short");
    assert_eq!(&data[0..4], &0xa1b2c3d4u32.to_le_bytes(), "pcap magic");
    let link = u32::from_le_bytes(data[20..24].try_into().unwrap());
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let incl = u32::from_le_bytes(data[at + 8..at + 12].try_into().unwrap()) as usize;
        at += 16;
        frames.push(data[at..at + incl].to_vec());
        at += incl;
    }
    (link, frames)
}

#[test]
fn capture_dir_records_every_forwarded_frame_as_pcap() {
    let nodes = alice_and_bob();
    let script = test_script!("network/capture_dir_records_every_forwarded_frame_as_pcap.py");
    let caps = std::path::PathBuf::from(format!("/tmp/ntd-caps-{}", std::process::id()));
    let (dir, r) = network(
        "cap",
        &nodes,
        script,
        &["--capture-dir", caps.to_str().unwrap()],
    );
    r.assert_code(0);
    assert!(r.stderr.contains("vlan 1: "), "{}", r.log());
    dir.assert_clean();
    let (link, frames) = read_pcap(&caps.join("vlan1.pcap"));
    assert_eq!(link, 1, "LINKTYPE_ETHERNET");
    // Echo requests (IPv4 protocol 1, ICMP type 8) from alice's vlan MAC.
    let pings = frames
        .iter()
        .filter(|f| f.len() > 34 && f[6..12] == [0x52, 0x54, 0, 0x12, 1, 1] && f[12..14] == [8, 0])
        .filter(|f| f[23] == 1 && f[34] == 8)
        .count();
    assert!(
        pings >= 3,
        "{} echo requests in {} frames",
        pings,
        frames.len()
    );
    let _ = std::fs::remove_dir_all(&caps);
}

/// Debian's real `vde_plug` (vdeplug4) joins ntd's switch from the test script and exchanges
/// frames with a guest: an ARP request for the guest's address gets the guest's reply.
#[test]
fn real_vde_plug_exchanges_frames_with_a_guest() {
    if std::process::Command::new("vde_plug")
        .arg("--help")
        .output()
        .is_err()
    {
        panic!("vde_plug (Debian package vde2) is required; ci/test installs it");
    }
    let nodes = [node("guest", &[1], 1)];
    let script = test_script!("network/real_vde_plug_exchanges_frames_with_a_guest.py");
    let (dir, r) = network("plug", &nodes, script, &[]);
    r.assert_code(0);
    assert!(
        r.stdout.contains("ARP reply from 52:54:00:12:01:01"),
        "{}",
        r.log()
    );
    dir.assert_clean();
}

/// Three nodes on vlan 1 and one (dave) on no vlan.
fn trio_and_dave() -> [Node; 4] {
    [
        node("alice", &[1], 1),
        node("bob", &[1], 2),
        node("carol", &[1], 3),
        node("dave", &[], 4),
    ]
}

#[test]
fn network_faults_loss_delay_partition_between() {
    let nodes = trio_and_dave();
    let script = test_script!("network/network_faults_loss_delay_partition_between.py");
    let trace = "faults-trace.json";
    let (dir, r) = network(
        "netfaults",
        &nodes,
        script,
        &["--net-seed", "12345", "--trace", trace],
    );
    r.assert_code(0);
    for needle in [
        "network faults use seed 12345 (replay with --net-seed 12345)",
        "vlan1: loss 20%",
        "vlan1: partition alice, bob | carol",
        "vlan1: healed",
        "alice<->bob",
        "vlan 1 network faults: dropped",
    ] {
        assert!(r.stderr.contains(needle), "missing {needle:?}\n{}", r.log());
    }
    assert!(r.stdout.contains("network faults ok"), "{}", r.log());
    let text = std::fs::read_to_string(dir.path.join(trace)).expect("trace written");
    let v = ntd::json::Value::parse(text.as_bytes()).expect("trace is JSON");
    let events = v
        .get("traceEvents")
        .and_then(|e| e.as_array())
        .unwrap_or(&[]);
    assert!(
        events.iter().any(|e| e
            .get("name")
            .and_then(|n| n.as_str())
            .is_some_and(|n| n.starts_with("vlan1: loss 20%"))),
        "no span of the impairment on the vlan's track"
    );
    dir.assert_clean();
}

#[test]
fn tcp_completes_under_loss_and_a_rate_limit() {
    let nodes = alice_and_bob();
    let script = test_script!("network/network_faults_tcp_under_loss_and_rate.py");
    let (dir, r) = network("nettcp", &nodes, script, &[]);
    r.assert_code(0);
    assert!(r.stdout.contains("tcp under faults ok"), "{}", r.log());
    dir.assert_clean();
}
