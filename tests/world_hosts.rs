//! Ranks on two hosts: `shmesh run --hosts` over two network namespaces (each with its own
//! `/dev/shm`), a `shmesh-bridge` per host started by the launcher, TLS between them. The
//! ranks exchange typed messages between every pair (two pairs share a host, four cross) and
//! run all-reduces whose results are checked on every rank.
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

#[test]
fn ranks_on_two_hosts_talk_through_the_bridges() {
    if !root_or_skip("ranks_on_two_hosts_talk_through_the_bridges") {
        return;
    }
    let _watchdog = Watchdog::new("ranks_on_two_hosts", TEST_LIMIT);
    let shmesh = PathBuf::from(env!("CARGO_BIN_EXE_shmesh"));
    let bridge = shmesh.with_file_name("shmesh-bridge");
    assert!(
        bridge.is_file(),
        "{} is missing: build it with `cargo build --release -p shmesh-bridge` (the README's \
         test command does)",
        bridge.display()
    );
    let net = Net::new(2).expect("two test hosts");
    let dir = std::env::temp_dir().join(format!("shmesh-world-hosts-{}", std::process::id()));
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
    let out = Command::new(&shmesh)
        .arg("run")
        .arg("--hosts")
        .arg(&hosts_file)
        .arg("--bridge-certs")
        .arg(&certs)
        .args(["--timeout", "150s", "--"])
        .arg(this_exe())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "hosts_rank")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs: String = fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("shmesh-run-"))
        .flat_map(|e| fs::read_dir(e.path()).into_iter().flatten().flatten())
        .filter(|e| {
            names
                .iter()
                .any(|n| e.file_name().to_string_lossy().contains(n.as_str()))
        })
        .map(|e| fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(
        out.status.success(),
        "shmesh run failed ({}):\n{stdout}\n{stderr}\nbridge logs:\n{logs}",
        out.status
    );
    for rank in 0..4 {
        let host = &names[rank / 2];
        let done = format!("rank {rank} ok on {host}");
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("[{rank}] ")) && l.contains(&done)),
            "rank {rank} did not finish on {host}:\n{stdout}\n{stderr}"
        );
    }
    // The copies the bridges made are gone with the job, on both hosts.
    for i in 0..2 {
        let left = net.host(i).run("ls /dev/shm").unwrap();
        assert!(
            !left.contains("shmesh.world."),
            "host {i} kept segments: {left}"
        );
    }
    let _ = fs::remove_dir_all(&dir);
}
