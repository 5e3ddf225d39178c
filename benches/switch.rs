//! Switch bench: `ntd vde-switch` against `vde_switch --hub`, same run, same client code
//! and switch processes (`tests/vdecommon`), each switch in its own process so that its CPU time can be
//! read from /proc/<pid>/stat. Also in the same run: ntd with network faults on (`--loss 1%`,
//! and `--delay 1ms`), and, if NTD_BENCH_BASELINE names another ntd binary (e.g. one built from
//! main), that binary without faults, to show that faults off cost nothing.
//!
//! * Throughput: one sender floods frames of 64 and 1514 bytes into a 2- or 4-port hub and
//!   every other port receives them; at most WINDOW frames are in flight (sent but not yet
//!   received by every receiver) so neither switch drops for lack of queue space. The client
//!   batches with sendmmsg/recvmmsg so that it is cheaper than the switches it measures.
//! * Latency: 64-byte ping-pong between two ports (the other ports receive the floods too).
//!
//! Runs are interleaved (ntd, vde_switch, ntd with faults, …) and repeated; the median is
//! reported, with the ratios ntd / vde_switch, ntd / baseline and faults on / off, and CPU
//! seconds per million frames. Writes target/bench-switch.json. Environment: NTD_BENCH_SECS
//! (per run, default 2), NTD_BENCH_REPS (default 3), NTD_BENCH_WINDOW (frames in flight;
//! default 128 for 64-byte and 64 for 1514-byte frames, below what vde_switch's 208 KiB
//! per-receiver queue holds), NTD_BENCH_BASELINE (path of another ntd binary),
//! NTD_BENCH_VARIANTS (comma-separated keys to run, e.g. `ntd,baseline`; plain ntd always runs).
//!
//! Frames carry a sequence number: a receiver has "seen" every frame up to the highest number
//! it received (no switch reorders), so a frame dropped on purpose by `--loss` closes the window
//! like a delivered one, and frames/s counts frames the switch handled. With `--delay 1ms` the
//! window caps throughput at about window / (1 ms + poll granularity): read its CPU per frame.
//!
//! Reading the numbers: "cpu s/Mframe" is the switch's own efficiency. "frames/s" is the
//! throughput of the whole pipeline, which on a 2-CPU machine is often bounded by the one
//! client thread (it does the mirror image of the switch's kernel work) rather than by the
//! switch; the "sw cpu" column shows how busy the switch was. The printed kernel floor (one
//! datagram send+recv in one hot thread) is a cost both switches pay per delivered copy, so it
//! bounds how much any user-space switch can gain. The machine may be shared: compare ratios
//! within one run, not absolutes.

// Tests may unwrap and panic: a failing assertion is their report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/vdecommon/mod.rs"]
mod vdecommon;

use std::fmt::Write as _;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vdecommon::vdeclient::{self, patterned, ClientOptions, VdeClient};
use vdecommon::{require_program, SwitchKind, SwitchProc};

const BATCH: usize = 32;
const STALL: Duration = Duration::from_millis(200);

/// One switch under test: a program and its arguments.
#[derive(Clone, Debug)]
struct Variant {
    name: &'static str,
    key: &'static str,
    program: Program,
    args: &'static [&'static str],
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Program {
    /// An `ntd` binary (`ntd vde-switch --sock DIR ARGS`).
    Ntd(PathBuf),
    /// `vde_switch --sock DIR --dirmode 0700 --hub`.
    VdeSwitch,
}

impl Variant {
    fn is_vde_switch(&self) -> bool {
        self.program == Program::VdeSwitch
    }

    /// Whether network faults are on (no latency ping-pong then: pings may be lost).
    fn impaired(&self) -> bool {
        !self.args.is_empty()
    }
}

/// What `ntd vde-switch` prints at exit, as far as the bench needs it.
struct ExitCounters {
    frames_per_batch: f64,
    drops: u64,
}

fn pin(pid: i32, cpu: usize) {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set, CPU_SET writes inside it, and
    // sched_setaffinity only reads it. Failure (e.g. one CPU) just leaves the process unpinned.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Start `variant` on a fresh `dir` (the tests' switch process: killed and reaped on drop),
/// pinned to `cpu`.
fn start_switch(variant: &Variant, dir: &Path, cpu: Option<usize>) -> SwitchProc {
    let _ = std::fs::remove_dir_all(dir);
    let p = match &variant.program {
        Program::Ntd(bin) => SwitchProc::start_program(SwitchKind::Ntd, bin, dir, variant.args),
        Program::VdeSwitch => SwitchProc::start(SwitchKind::VdeSwitch, dir, variant.args),
    };
    if let Some(cpu) = cpu {
        pin(p.pid() as i32, cpu);
    }
    p
}

/// Stop the switch (stdin closed: both switches exit on EOF) and read ntd's exit counters
/// (None for vde_switch, which prints none).
fn stop_switch(sw: SwitchProc) -> Option<ExitCounters> {
    let dir = sw.dir.clone();
    let (_, stdout, _) = sw.stop();
    let _ = std::fs::remove_dir_all(dir);
    let stats = stdout.iter().find(|l| l.contains("batches="))?;
    let field = |name: &str| -> Option<f64> {
        stats
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
    };
    let drops = [
        "runt=",
        "oversize=",
        "recv_error=",
        "receiver_full=",
        "receiver_gone=",
        "send_error=",
    ]
    .iter()
    .filter_map(|n| field(n))
    .sum::<f64>() as u64;
    Some(ExitCounters {
        frames_per_batch: field("frames_in=")? / field("batches=")?.max(1.0),
        drops,
    })
}

/// utime + stime of the switch process, in seconds.
fn switch_cpu_seconds(sw: &SwitchProc) -> f64 {
    proc_cpu_seconds(&format!("/proc/{}/stat", sw.pid()))
}

fn proc_cpu_seconds(stat_path: &str) -> f64 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

/// What one receiver has got so far.
#[derive(Clone, Copy, Default)]
struct Received {
    /// Datagrams received.
    count: u64,
    /// One past the highest sequence number received: every frame below it was handled.
    seen: u64,
}

/// Receive every queued datagram (up to BATCH per call) into `got`.
fn drain(client: &VdeClient, bufs: &mut [Vec<u8>], expect_len: usize, got: &mut Received) {
    let fd = client.data().as_raw_fd();
    loop {
        let mut iovs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: mmsghdr is plain data; zeroed means no name and no control buffer.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        // SAFETY: every msghdr points at one live iovec describing a live, writable buffer of
        // the stated length; `msgs` outlives the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                msgs.len() as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            return;
        }
        for (m, buf) in msgs[..n as usize].iter().zip(bufs.iter()) {
            assert_eq!(
                m.msg_len as usize, expect_len,
                "frame changed size in the switch"
            );
            got.seen = got.seen.max(u64::from(seq_of(buf)) + 1);
        }
        got.count += n as u64;
    }
}

fn seq_of(frame: &[u8]) -> u32 {
    u32::from_be_bytes([frame[14], frame[15], frame[16], frame[17]])
}

/// Send up to `n` frames numbered from `first`, stamping the numbers into `ring`; returns how
/// many the kernel took.
fn send_batch(client: &VdeClient, ring: &mut [Vec<u8>], first: u64, n: usize) -> u64 {
    for (k, frame) in ring[..n].iter_mut().enumerate() {
        frame[14..18].copy_from_slice(&((first + k as u64) as u32).to_be_bytes());
    }
    let iovs: Vec<[std::io::IoSlice<'_>; 1]> = ring[..n]
        .iter()
        .map(|f| [std::io::IoSlice::new(f)])
        .collect();
    let mut controls: Vec<rustix::net::SendAncillaryBuffer<'_, '_, '_>> =
        (0..n).map(|_| Default::default()).collect();
    let mut msgs: Vec<rustix::net::MMsgHdr<'_>> = iovs
        .iter()
        .zip(controls.iter_mut())
        .map(|(iov, c)| rustix::net::MMsgHdr::new(iov, c))
        .collect();
    match rustix::net::sendmmsg(client.data(), &mut msgs, rustix::net::SendFlags::DONTWAIT) {
        Ok(k) => k as u64,
        Err(_) => 0,
    }
}

fn wait_readable(clients: &[&VdeClient], timeout: Duration) {
    let mut fds: Vec<rustix::event::PollFd<'_>> = clients
        .iter()
        .map(|c| rustix::event::PollFd::new(c.data(), rustix::event::PollFlags::IN))
        .collect();
    let ts = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: timeout.as_nanos() as i64,
    };
    let _ = rustix::event::poll(&mut fds, Some(&ts));
}

struct Throughput {
    fps: f64,
    switch_cpu_per_mframe: f64,
    switch_cpu_share: f64,
    client_cpu_share: f64,
    /// Frames that never reached some receiver (summed over receivers).
    lost: u64,
    window: u64,
    frames_per_batch: Option<f64>,
    /// ntd's own drop counters at exit.
    switch_drops: Option<u64>,
}

fn connect_all(dir: &Path, ports: usize) -> Vec<VdeClient> {
    (0..ports)
        .map(|i| {
            VdeClient::connect(
                dir,
                ClientOptions::described(&format!("bench {i}")),
                &mut || std::thread::sleep(Duration::from_micros(200)),
            )
            .expect("handshake")
        })
        .collect()
}

fn throughput(
    variant: &Variant,
    dir: &Path,
    ports: usize,
    size: usize,
    secs: f64,
    cpus: Cpus,
) -> Throughput {
    let window = cpus.window.unwrap_or(if size < 1000 { 128 } else { 64 });
    let sw = start_switch(variant, dir, cpus.switch);
    let clients = connect_all(dir, ports);
    let (sender, receivers) = clients.split_first().unwrap();
    let mut ring: Vec<Vec<u8>> = (0..BATCH)
        .map(|_| patterned(size, vdeclient::mac(1), 0))
        .collect();
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; 2048]).collect();
    let mut received = vec![Received::default(); receivers.len()];
    let mut sent = 0u64;
    // Frames given up on so the window can reopen after a stall (they may still arrive).
    let mut written_off = 0u64;
    let mut last_progress = Instant::now();

    let mut run = |until: Instant,
                   send: bool,
                   sent: &mut u64,
                   received: &mut [Received],
                   written_off: &mut u64| {
        while Instant::now() < until {
            let seen = received.iter().map(|r| r.seen).min().unwrap();
            let inflight = sent.saturating_sub(seen.max(*written_off));
            let mut progress = false;
            if send && inflight < window {
                let n = ((window - inflight) as usize).min(BATCH);
                let k = send_batch(sender, &mut ring, *sent, n);
                *sent += k;
                progress |= k > 0;
            }
            for (r, got) in receivers.iter().zip(received.iter_mut()) {
                let before = got.count;
                drain(r, &mut bufs, size, got);
                progress |= got.count > before;
            }
            if progress {
                last_progress = Instant::now();
            } else if !send && last_progress.elapsed() > STALL {
                return;
            } else if send && last_progress.elapsed() > STALL {
                *written_off = *sent;
                last_progress = Instant::now();
            } else {
                let refs: Vec<&VdeClient> = receivers.iter().collect();
                wait_readable(&refs, Duration::from_millis(1));
            }
        }
    };

    run(
        Instant::now() + Duration::from_millis(300),
        true,
        &mut sent,
        &mut received,
        &mut written_off,
    );
    let cpu0 = switch_cpu_seconds(&sw);
    let me0 = proc_cpu_seconds("/proc/self/stat");
    let d0 = received.iter().map(|r| r.seen).min().unwrap();
    let t0 = Instant::now();
    run(
        t0 + Duration::from_secs_f64(secs),
        true,
        &mut sent,
        &mut received,
        &mut written_off,
    );
    let elapsed = t0.elapsed().as_secs_f64();
    let d1 = received.iter().map(|r| r.seen).min().unwrap();
    let cpu = switch_cpu_seconds(&sw) - cpu0;
    let me = proc_cpu_seconds("/proc/self/stat") - me0;
    // Whatever is still in flight arrives now, or was really lost.
    run(
        Instant::now() + Duration::from_secs(2),
        false,
        &mut sent,
        &mut received,
        &mut written_off,
    );
    let lost = received.iter().map(|r| sent - r.count).sum();
    let frames = (d1 - d0) as f64;
    drop(clients);
    let exit = stop_switch(sw);
    Throughput {
        fps: frames / elapsed,
        switch_cpu_per_mframe: cpu / frames * 1e6,
        switch_cpu_share: cpu / elapsed,
        client_cpu_share: me / elapsed,
        lost,
        window,
        frames_per_batch: exit.as_ref().map(|e| e.frames_per_batch),
        switch_drops: exit.map(|e| e.drops),
    }
}

/// Cost of one 64-byte datagram send + recv in one hot thread: the kernel's share that both
/// switches pay per delivered copy, to read the results against.
fn kernel_floor_us() -> f64 {
    let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let f = [0u8; 64];
    let mut buf = [0u8; 2048];
    let n = 200_000u32;
    let t = Instant::now();
    for _ in 0..n {
        a.send(&f).unwrap();
        b.recv(&mut buf).unwrap();
    }
    t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

struct Latency {
    p50_us: f64,
    p99_us: f64,
    mean_us: f64,
}

fn latency(variant: &Variant, dir: &Path, ports: usize, rounds: usize, cpus: Cpus) -> Latency {
    let sw = start_switch(variant, dir, cpus.switch);
    let clients = connect_all(dir, ports);
    let (a, rest) = clients.split_first().unwrap();
    let (b, others) = rest.split_first().unwrap();
    for c in [a, b] {
        c.data().set_nonblocking(false).unwrap();
        c.data()
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
    }
    let ping = patterned(64, vdeclient::mac(1), 0);
    let pong = patterned(64, vdeclient::mac(2), 1);
    let mut buf = vec![0u8; 2048];
    let mut sink: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; 2048]).collect();
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds + rounds / 10 {
        let t = Instant::now();
        a.send(&ping).unwrap();
        b.data().recv(&mut buf).expect("ping lost");
        b.send(&pong).unwrap();
        a.data().recv(&mut buf).expect("pong lost");
        let rtt = t.elapsed();
        if i >= rounds / 10 {
            samples.push(rtt.as_secs_f64() * 1e6);
        }
        for o in others {
            drain(o, &mut sink, 64, &mut Received::default());
        }
    }
    drop(clients);
    drop(sw);
    samples.sort_by(f64::total_cmp);
    Latency {
        p50_us: samples[samples.len() / 2],
        p99_us: samples[samples.len() * 99 / 100],
        mean_us: samples.iter().sum::<f64>() / samples.len() as f64,
    }
}

#[derive(Clone, Copy)]
struct Cpus {
    switch: Option<usize>,
    /// Frames in flight (sent, not yet received by every receiver); default per frame size,
    /// below what vde_switch's default 208 KiB send buffer holds for one receiver.
    window: Option<u64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` / `cargo test --benches`
    }
    if require_program("vde_switch").is_none() {
        return; // nothing to compare against (a failure under NTD_REQUIRE_INTEROP=1)
    }
    let secs: f64 = std::env::var("NTD_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.0);
    let reps: usize = std::env::var("NTD_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let window: Option<u64> = std::env::var("NTD_BENCH_WINDOW")
        .ok()
        .and_then(|v| v.parse().ok());
    let cpus = if ncpu >= 2 {
        pin(0, 0); // this process (the client) on CPU 0, each switch on CPU 1
        Cpus {
            switch: Some(1),
            window,
        }
    } else {
        Cpus {
            switch: None,
            window,
        }
    };
    let dir = PathBuf::from(format!("/tmp/ntdb-{}", std::process::id()));
    let variants = variants();
    let floor = kernel_floor_us();
    println!(
        "switch bench: {secs} s per run, {reps} interleaved runs (median), {ncpu} CPUs, load {}; \
         kernel floor: one 64-byte datagram send+recv in one thread = {floor:.3} us",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    for v in &variants {
        if let Program::Ntd(bin) = &v.program {
            println!(
                "  {:<17} {} vde-switch {}",
                v.name,
                bin.display(),
                v.args.join(" ")
            );
        }
    }

    let mut json = String::from("{\n  \"throughput\": [\n");
    let mut table = String::new();
    let _ = writeln!(
        table,
        "{:<17} {:>5} {:>5} {:>6} {:>11} {:>8} {:>13} {:>7} {:>7} {:>6} {:>8} {:>8}",
        "switch",
        "ports",
        "bytes",
        "window",
        "frames/s",
        "MB/s",
        "cpu s/Mframe",
        "sw cpu",
        "cli cpu",
        "lost",
        "sw drops",
        "fr/batch"
    );
    let mut first = true;
    let mut ratios = Vec::new();
    for ports in [2usize, 4] {
        for size in [64usize, 1514] {
            let mut runs: Vec<Vec<Throughput>> = variants.iter().map(|_| Vec::new()).collect();
            for _ in 0..reps {
                for (i, v) in variants.iter().enumerate() {
                    runs[i].push(throughput(v, &dir, ports, size, secs, cpus));
                }
            }
            let mut fps_by = vec![0.0; variants.len()];
            let mut cpu_by = vec![0.0; variants.len()];
            for (i, v) in variants.iter().enumerate() {
                let r = &runs[i];
                let fps = median(r.iter().map(|t| t.fps).collect());
                let cpm = median(r.iter().map(|t| t.switch_cpu_per_mframe).collect());
                let sw_share = median(r.iter().map(|t| t.switch_cpu_share).collect());
                let cli_share = median(r.iter().map(|t| t.client_cpu_share).collect());
                let lost: u64 = r.iter().map(|t| t.lost).sum();
                let window = r[0].window;
                let drops: Option<u64> = r.iter().map(|t| t.switch_drops).sum();
                let per_batch = r
                    .iter()
                    .filter_map(|t| t.frames_per_batch)
                    .collect::<Vec<_>>();
                let per_batch = if per_batch.is_empty() {
                    None
                } else {
                    Some(median(per_batch))
                };
                fps_by[i] = fps;
                cpu_by[i] = cpm;
                let _ = writeln!(
                    table,
                    "{:<17} {:>5} {:>5} {:>6} {:>11.0} {:>8.1} {:>13.3} {:>6.0}% {:>6.0}% {:>6} {:>8} {:>8}",
                    v.name,
                    ports,
                    size,
                    window,
                    fps,
                    fps * size as f64 * (ports - 1) as f64 / 1e6,
                    cpm,
                    sw_share * 100.0,
                    cli_share * 100.0,
                    lost,
                    drops.map_or("-".to_string(), |d| d.to_string()),
                    per_batch.map_or("-".to_string(), |b| format!("{b:.1}"))
                );
                let _ = write!(
                    json,
                    "{}    {{\"switch\": \"{}\", \"args\": \"{}\", \"ports\": {ports}, \"frame_bytes\": {size}, \
                     \"frames_per_s\": {fps:.0}, \"switch_cpu_s_per_mframe\": {cpm:.4}, \
                     \"switch_cpu_share\": {sw_share:.3}, \"client_cpu_share\": {cli_share:.3}, \
                     \"window\": {window}, \"lost\": {lost}, \"switch_drops\": {}, \
                     \"frames_per_batch\": {}, \"runs_fps\": [{}]}}",
                    if first { "" } else { ",\n" },
                    v.key,
                    v.args.join(" "),
                    drops.map_or("null".to_string(), |d| d.to_string()),
                    per_batch.map_or("null".to_string(), |b| format!("{b:.1}")),
                    r.iter().map(|t| format!("{:.0}", t.fps)).collect::<Vec<_>>().join(", ")
                );
                first = false;
            }
            // Every ratio against plain ntd (variant 0), measured in this run.
            for (i, v) in variants.iter().enumerate().skip(1) {
                let (tp, cpu) = (fps_by[0] / fps_by[i], cpu_by[0] / cpu_by[i]);
                let (label, tp, cpu) = if v.is_vde_switch() {
                    ("ntd / vde_switch".to_string(), tp, cpu)
                } else if v.impaired() {
                    (format!("{} / ntd", v.key), 1.0 / tp, 1.0 / cpu)
                } else {
                    (format!("ntd / {}", v.key), tp, cpu)
                };
                let _ = writeln!(
                    table,
                    "{:<17} {:>5} {:>5} {:>6} {label}: throughput x{tp:.2}, CPU per frame x{cpu:.2}",
                    "", ports, size, ""
                );
                ratios.push((label, ports, size, tp, cpu));
            }
        }
    }
    json.push_str("\n  ],\n  \"latency\": [\n");
    let _ = writeln!(
        table,
        "\n{:<17} {:>5} {:>10} {:>10} {:>10}",
        "switch", "ports", "p50 us", "p99 us", "mean us"
    );
    let mut first = true;
    let rounds = (secs * 5000.0) as usize;
    let plain: Vec<&Variant> = variants.iter().filter(|v| !v.impaired()).collect();
    for ports in [2usize, 4] {
        let mut runs: Vec<Vec<Latency>> = plain.iter().map(|_| Vec::new()).collect();
        for _ in 0..reps {
            for (i, v) in plain.iter().enumerate() {
                runs[i].push(latency(v, &dir, ports, rounds, cpus));
            }
        }
        for (i, v) in plain.iter().enumerate() {
            let r = &runs[i];
            let p50 = median(r.iter().map(|l| l.p50_us).collect());
            let p99 = median(r.iter().map(|l| l.p99_us).collect());
            let mean = median(r.iter().map(|l| l.mean_us).collect());
            let _ = writeln!(
                table,
                "{:<17} {:>5} {:>10.1} {:>10.1} {:>10.1}",
                v.name, ports, p50, p99, mean
            );
            let _ = write!(
                json,
                "{}    {{\"switch\": \"{}\", \"ports\": {ports}, \"frame_bytes\": 64, \"rtt_p50_us\": {p50:.2}, \
                 \"rtt_p99_us\": {p99:.2}, \"rtt_mean_us\": {mean:.2}}}",
                if first { "" } else { ",\n" },
                v.key
            );
            first = false;
        }
    }
    let _ = write!(
        json,
        "\n  ],\n  \"ratios\": [{}],\n  \"secs_per_run\": {secs}, \"reps\": {reps}, \"cpus\": {ncpu}, \
         \"kernel_floor_send_recv_us\": {floor:.4}\n}}\n",
        ratios
            .iter()
            .map(|(label, p, s, r, c)| format!(
                "{{\"ratio\": \"{label}\", \"ports\": {p}, \"frame_bytes\": {s}, \"throughput_ratio\": {r:.3}, \
                 \"cpu_per_frame_ratio\": {c:.3}}}"
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("{table}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-switch.json");
    std::fs::write(&out, json).expect("write bench json");
    println!("wrote {}", out.display());
    let _ = std::fs::remove_dir_all(&dir);
}

/// What this run measures, plain ntd first (every ratio is against it).
fn variants() -> Vec<Variant> {
    let ntd = PathBuf::from(env!("CARGO_BIN_EXE_ntd"));
    let mut v = vec![
        Variant {
            name: "ntd vde-switch",
            key: "ntd",
            program: Program::Ntd(ntd.clone()),
            args: &[],
        },
        Variant {
            name: "vde_switch --hub",
            key: "vde_switch",
            program: Program::VdeSwitch,
            args: &[],
        },
    ];
    if let Some(base) = std::env::var_os("NTD_BENCH_BASELINE") {
        v.push(Variant {
            name: "ntd baseline",
            key: "baseline",
            program: Program::Ntd(PathBuf::from(base)),
            args: &[],
        });
    }
    v.push(Variant {
        name: "ntd --loss 10%",
        key: "loss",
        program: Program::Ntd(ntd.clone()),
        args: &["--loss", "10%", "--net-seed", "1"],
    });
    v.push(Variant {
        name: "ntd --delay 1ms",
        key: "delay",
        program: Program::Ntd(ntd),
        args: &["--delay", "1ms", "--net-seed", "1"],
    });
    if let Ok(keys) = std::env::var("NTD_BENCH_VARIANTS") {
        let keys: Vec<&str> = keys.split(',').map(str::trim).collect();
        v.retain(|x| x.key == "ntd" || keys.contains(&x.key));
    }
    v
}
