//! Ranks on two hosts: `shmesh run --hosts` over two network namespaces (each with its own
//! `/dev/shm`), a `shmesh-bridge` per host started by the launcher, TLS between them. The
//! ranks exchange typed messages between every pair (two pairs share a host, four cross) and
//! run all-reduces whose results are checked on every rank; and a rank SIGKILLed on one host
//! mid-all-reduce is `PeerGone` on both hosts (the bridges pass the ring ends' deaths on),
//! after which the survivors still talk across the hosts.
//!
//! Needs root (namespaces) and the `shmesh-bridge` binary next to `shmesh` (the README's test
//! command builds both); without root it prints why it skips, unless `SHMESH_REQUIRE_NETNS=1`.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use common::{arm_child_lifetime, child_role, this_exe, Watchdog, CHILD_ENV, TEST_LIMIT};
use shmesh::world::{Op, Source, Tag, World};
use shmesh_testkit::netns::{root_or_skip, Net};

/// The port every host's bridge listens on (each host has its own address).
const PORT: u16 = 7611;

#[test]
fn child_entry() {
    let Some((role, _args)) = child_role() else {
        return;
    };
    arm_child_lifetime();
    match role.as_str() {
        "hosts_rank" => hosts_rank(),
        "hosts_kill" => hosts_kill(),
        other => panic!("unknown child role '{other}'"),
    }
}

/// One rank: a message to and from every other rank, then all-reduces, each checked.
fn hosts_rank() {
    let mut world = World::init().expect("join the job");
    let (rank, size) = (world.rank(), world.size());
    let host = std::env::var("SHMESH_HOST").unwrap_or_default();
    for other in (0..size).filter(|&o| o != rank) {
        world
            .send(other, 3, &format!("from {rank} on {host} to {other}"))
            .expect("send");
    }
    for _ in 1..size {
        let msg = world.recv::<String>(Source::Any, Tag::Is(3)).expect("recv");
        let want = format!("from {} on ", msg.source());
        assert!(
            msg.starts_with(&want) && msg.ends_with(&format!(" to {rank}")),
            "got {:?}",
            &**msg
        );
    }
    for len in [1usize, 3000, 200_000] {
        let mut data: Vec<u64> = (0..len as u64).map(|i| i * 7 + rank as u64).collect();
        world.all_reduce(&mut data, Op::Sum).expect("all_reduce");
        let n = size as u64;
        for (i, got) in data.iter().enumerate() {
            assert_eq!(
                *got,
                n * 7 * i as u64 + n * (n - 1) / 2,
                "element {i} of {len}"
            );
        }
    }
    let mut root_value = vec![0u32; 1000];
    if rank == 3 {
        root_value
            .iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = i as u32 * 3);
    }
    world.broadcast(3, &mut root_value).expect("broadcast");
    assert!(root_value
        .iter()
        .enumerate()
        .all(|(i, &x)| x == i as u32 * 3));
    world.barrier().expect("barrier");
    println!("rank {rank} ok on {host}");
}

/// All-reduces until rank 3 (on the second host) kills itself in the middle of them: every
/// other rank, on both hosts, must get `PeerGone(3)`; then the survivors still exchange
/// messages across the hosts.
fn hosts_kill() {
    let mut world = World::init().expect("join the job");
    let rank = world.rank();
    let mut round = 0u64;
    let err = loop {
        if rank == 3 && round == 200 {
            // SIGKILL: no unwinding, the world is not left in order.
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
        }
        let mut data = vec![1u64; 64];
        match world.all_reduce(&mut data, Op::Sum) {
            Ok(()) => assert!(data.iter().all(|&x| x == 4), "round {round}: {data:?}"),
            Err(e) => break e,
        }
        round += 1;
        assert!(round < 1_000_000, "rank 3 never died");
    };
    assert_eq!(err.gone_rank(), Some(3), "rank {rank}: {err}");
    // The survivors carry on: a ring of messages 0 -> 1 -> 2 -> 0 across the hosts.
    let (next, prev) = ([1, 2, 0][rank], [2, 0, 1][rank]);
    world
        .send(next, 9, &(rank as u64))
        .expect("send to a survivor");
    let got = world
        .recv::<u64>(Source::Rank(prev), Tag::Is(9))
        .expect("recv from a survivor");
    assert_eq!(got.to_native(), prev as u64);
    println!("rank {rank} saw 3 gone after {round} rounds");
}

/// The two test hosts, their certificates and a hosts file for `shmesh run`.
struct Setup {
    net: Net,
    dir: PathBuf,
    certs: PathBuf,
    hosts_file: PathBuf,
    names: Vec<String>,
    shmesh: PathBuf,
}

impl Setup {
    fn new(test: &str) -> Setup {
        let shmesh = PathBuf::from(env!("CARGO_BIN_EXE_shmesh"));
        let bridge = shmesh.with_file_name("shmesh-bridge");
        assert!(
            bridge.is_file(),
            "{} is missing: build it with `cargo build --release -p shmesh-bridge` (the \
             README's test command does)",
            bridge.display()
        );
        let net = Net::new(2).expect("two test hosts");
        let dir = std::env::temp_dir().join(format!("shmesh-{test}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let names: Vec<String> = (0..2).map(|i| net.host(i).name().to_owned()).collect();
        let certs = dir.join("certs");
        let made = Command::new(&bridge)
            .arg("gen-certs")
            .arg("--out")
            .arg(&certs)
            .args(&names)
            .output()
            .unwrap();
        assert!(
            made.status.success(),
            "gen-certs: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        let mut hosts = String::from("# two network namespaces as hosts\n");
        for i in 0..2 {
            let host = net.host(i);
            let exec: Vec<String> = std::iter::once("nsenter".to_owned())
                .chain(
                    host.nsenter_args()
                        .iter()
                        .map(|a| a.to_string_lossy().into_owned()),
                )
                .collect();
            hosts.push_str(&format!(
                "{} slots=2 exec=\"{}\" bridge={}:{PORT}\n",
                host.name(),
                exec.join(" "),
                host.addr()
            ));
        }
        let hosts_file = dir.join("hosts");
        fs::write(&hosts_file, &hosts).unwrap();
        Setup {
            net,
            dir,
            certs,
            hosts_file,
            names,
            shmesh,
        }
    }

    /// Runs the job: every rank plays `role`.
    fn run(&self, role: &str) -> (std::process::ExitStatus, String, String) {
        let out = Command::new(&self.shmesh)
            .arg("run")
            .arg("--hosts")
            .arg(&self.hosts_file)
            .arg("--bridge-certs")
            .arg(&self.certs)
            .args(["--timeout", "150s", "--"])
            .arg(this_exe())
            .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, role)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status, stdout, stderr)
    }

    /// The bridges' logs of the jobs run on these hosts.
    fn bridge_logs(&self) -> String {
        fs::read_dir(std::env::temp_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("shmesh-run-"))
            .flat_map(|e| fs::read_dir(e.path()).into_iter().flatten().flatten())
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                self.names.iter().any(|n| name.contains(n.as_str()))
            })
            .map(|e| fs::read_to_string(e.path()).unwrap_or_default())
            .collect()
    }

    /// Whether rank `rank`'s output has a line containing `text`.
    fn said(stdout: &str, rank: usize, text: &str) -> bool {
        stdout
            .lines()
            .any(|l| l.starts_with(&format!("[{rank}] ")) && l.contains(text))
    }

    fn assert_no_segments_left(&self) {
        for i in 0..2 {
            let left = self.net.host(i).run("ls /dev/shm").unwrap();
            assert!(
                !left.contains("shmesh.world."),
                "host {i} kept segments: {left}"
            );
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_rank_killed_on_one_host_is_peer_gone_on_both() {
    if !root_or_skip("a_rank_killed_on_one_host_is_peer_gone_on_both") {
        return;
    }
    let _watchdog = Watchdog::new("rank_killed_across_hosts", TEST_LIMIT);
    let setup = Setup::new("world-hosts-kill");
    let (status, stdout, stderr) = setup.run("hosts_kill");
    assert!(
        !status.success() && stderr.contains("rank 3 was killed by signal 9"),
        "the launcher must report rank 3's death ({status}):\n{stdout}\n{stderr}"
    );
    for rank in 0..3 {
        assert!(
            Setup::said(&stdout, rank, &format!("rank {rank} saw 3 gone")),
            "rank {rank} did not see rank 3 die:\n{stdout}\n{stderr}\nbridge logs:\n{}",
            setup.bridge_logs()
        );
    }
    setup.assert_no_segments_left();
}

#[test]
fn ranks_on_two_hosts_talk_through_the_bridges() {
    if !root_or_skip("ranks_on_two_hosts_talk_through_the_bridges") {
        return;
    }
    let _watchdog = Watchdog::new("ranks_on_two_hosts", TEST_LIMIT);
    let setup = Setup::new("world-hosts");
    let (status, stdout, stderr) = setup.run("hosts_rank");
    assert!(
        status.success(),
        "shmesh run failed ({status}):\n{stdout}\n{stderr}\nbridge logs:\n{}",
        setup.bridge_logs()
    );
    for rank in 0..4 {
        let host = &setup.names[rank / 2];
        assert!(
            Setup::said(&stdout, rank, &format!("rank {rank} ok on {host}")),
            "rank {rank} did not finish on {host}:\n{stdout}\n{stderr}"
        );
    }
    // The copies the bridges made are gone with the job, on both hosts.
    setup.assert_no_segments_left();
}
