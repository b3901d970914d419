//! Tests of the network-namespace hosts of `shmesh_testkit::netns`: hosts reach each other over
//! TCP, each has its own `/dev/shm`, the faults cut and restore traffic, and a net leaves
//! nothing behind, also when its test panics.
//!
//! Traffic is checked with this test binary itself, run inside the hosts as child roles: a
//! `listen` child echoes one byte per connection, a `client` child tries the connections the
//! test asks for and reports each result. "Reaches" retries until [`DEADLINE`]; "blocked" is
//! one attempt that must fail (the faults drop every packet, so no wait is long enough to
//! succeed).

use std::collections::BTreeSet;
use std::io::{BufRead, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use shmesh_testkit::netns::{root_or_skip, Host, Net, RUN_DIR};
use shmesh_testkit::{child_role, say, wait_for_parent, Proc, Watchdog, DEADLINE};

/// How long one connection attempt may take before it counts as failed.
const ATTEMPT: Duration = Duration::from_millis(1000);
/// A test that is still running after this long hangs.
const TEST_LIMIT: Duration = Duration::from_secs(300);

// ---- child roles ----

#[test]
fn child_entry() {
    let Some((role, args)) = child_role() else {
        return;
    };
    match role.as_str() {
        "listen" => {
            let addr: Ipv4Addr = args.get(0);
            let listener = TcpListener::bind((addr, 0)).expect("bind the listener");
            say("port", listener.local_addr().expect("local addr").port());
            thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(mut conn) = conn else { continue };
                    thread::spawn(move || {
                        let _ = conn.set_read_timeout(Some(DEADLINE));
                        let mut byte = [0u8; 1];
                        if conn.read_exact(&mut byte).is_ok() {
                            let _ = conn.write_all(&byte);
                        }
                    });
                }
            });
            wait_for_parent();
        }
        "client" => {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                let to: SocketAddr = line.trim().parse().expect("an address to try");
                match echo(to, ATTEMPT) {
                    Ok(()) => say("result", "ok"),
                    Err(e) => say("result", format!("err {e}")),
                }
            }
        }
        "make-net" => {
            let net = Net::new(2).expect("make a net");
            say("net", net.name());
            wait_for_parent();
        }
        other => panic!("unknown child role {other}"),
    }
}

/// Connects to `to`, sends one byte and reads it back.
fn echo(to: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    let mut conn = TcpStream::connect_timeout(&to, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    conn.write_all(b"x")?;
    let mut byte = [0u8; 1];
    conn.read_exact(&mut byte)?;
    if &byte != b"x" {
        return Err(std::io::Error::other("the echo differs"));
    }
    Ok(())
}

// ---- helpers ----

/// An echo listener inside a host.
struct Listener {
    _proc: Proc,
    addr: SocketAddr,
}

fn listen(host: &Host) -> Listener {
    let mut proc = host.spawn("listen", &[&host.addr()]);
    let port: u16 = proc.expect("port").parse().expect("a port");
    Listener {
        _proc: proc,
        addr: SocketAddr::from((host.addr(), port)),
    }
}

/// A client inside a host that tries connections on request.
struct Client {
    proc: Proc,
    from: String,
}

impl Client {
    fn new(host: &Host) -> Client {
        Client {
            proc: host.spawn("client", &[]),
            from: host.name().to_owned(),
        }
    }

    fn attempt(&mut self, to: SocketAddr) -> Result<(), String> {
        self.proc.send(&to.to_string());
        let result = self.proc.expect("result");
        if result == "ok" {
            Ok(())
        } else {
            Err(result)
        }
    }

    /// Fails unless a connection to `to` succeeds before [`DEADLINE`].
    #[track_caller]
    fn reaches(&mut self, to: SocketAddr) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.attempt(to) {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => self.proc.fail(format!(
                    "{} cannot reach {to} within {DEADLINE:?}: {e}",
                    self.from
                )),
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Fails unless a connection to `to` fails.
    #[track_caller]
    fn blocked(&mut self, to: SocketAddr) {
        if self.attempt(to).is_ok() {
            self.proc.fail(format!(
                "{} reached {to}, which should be cut off",
                self.from
            ));
        }
    }
}

fn run(host: &Host, script: &str) -> String {
    host.run(script)
        .unwrap_or_else(|e| panic!("on {}: `{script}`: {e}", host.name()))
}

fn netns_list() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    assert!(out.status.success(), "ip netns list: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn root_veths() -> BTreeSet<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "type", "veth"])
        .output()
        .expect("ip link show");
    assert!(out.status.success(), "ip link show: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|name| name.trim().to_owned())
        .collect()
}

/// What a net is made of, to look for after it is gone.
struct Leftovers {
    net: String,
    namespaces: Vec<String>,
    dir: PathBuf,
}

impl Leftovers {
    fn of(net: &Net) -> Leftovers {
        let mut namespaces: Vec<String> = net.hosts().iter().map(|h| h.name().into()).collect();
        let switch = format!("{}sw", net.name());
        if netns_list()
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&switch))
        {
            namespaces.push(switch);
        }
        Leftovers {
            net: net.name().to_owned(),
            namespaces,
            dir: net.dir().to_owned(),
        }
    }

    #[track_caller]
    fn assert_none(&self) {
        let list = netns_list();
        for ns in &self.namespaces {
            assert!(
                !list
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(ns.as_str())),
                "namespace {ns} is still there:\n{list}"
            );
            assert!(!Path::new("/run/netns").join(ns).exists());
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").expect("read mounts");
        for line in mounts.lines() {
            assert!(
                !line.contains(&self.net),
                "a mount of net {} is still there: {line}",
                self.net
            );
        }
        assert!(!self.dir.exists(), "{} is still there", self.dir.display());
    }
}

// ---- tests ----

#[test]
fn two_hosts_reach_each_other() {
    if !root_or_skip("two_hosts_reach_each_other") {
        return;
    }
    let _watchdog = Watchdog::new("two_hosts_reach_each_other", TEST_LIMIT);
    let net = Net::new(2).expect("make a net");
    let (a, b) = (net.host(0), net.host(1));
    assert_ne!(a.addr(), b.addr());
    assert_ne!(a.name(), b.name());
    let (la, lb) = (listen(a), listen(b));
    Client::new(a).reaches(lb.addr);
    Client::new(b).reaches(la.addr);
    // Nothing outside the net is reachable: no route leads there.
    let routes = run(a, "ip -4 route show");
    assert!(
        !routes.contains("default"),
        "a host has a default route: {routes}"
    );
    net.close().expect("close the net");
}

#[test]
fn three_hosts_all_reach_each_other() {
    if !root_or_skip("three_hosts_all_reach_each_other") {
        return;
    }
    let _watchdog = Watchdog::new("three_hosts_all_reach_each_other", TEST_LIMIT);
    let net = Net::new(3).expect("make a net");
    let listeners: Vec<Listener> = net.hosts().iter().map(listen).collect();
    for (i, host) in net.hosts().iter().enumerate() {
        let mut client = Client::new(host);
        for (j, listener) in listeners.iter().enumerate() {
            if i != j {
                client.reaches(listener.addr);
            }
        }
    }
}

#[test]
fn dev_shm_is_private_to_each_host() {
    if !root_or_skip("dev_shm_is_private_to_each_host") {
        return;
    }
    let _watchdog = Watchdog::new("dev_shm_is_private_to_each_host", TEST_LIMIT);
    let net = Net::new(2).expect("make a net");
    let (a, b) = (net.host(0), net.host(1));
    let file = format!("shmesh-netns-test-{}", std::process::id());
    run(a, &format!("echo on-a > /dev/shm/{file}"));
    assert_eq!(run(a, &format!("cat /dev/shm/{file}")), "on-a\n");
    assert!(
        !run(b, "ls -a /dev/shm").lines().any(|l| l == file),
        "host b sees host a's /dev/shm/{file}"
    );
    assert!(
        !Path::new("/dev/shm").join(&file).exists(),
        "the machine sees host a's /dev/shm/{file}"
    );
    // The same name on both hosts: two files.
    run(b, &format!("echo on-b > /dev/shm/{file}"));
    assert_eq!(run(a, &format!("cat /dev/shm/{file}")), "on-a\n");
    assert_eq!(run(b, &format!("cat /dev/shm/{file}")), "on-b\n");
    // Anyone may create segments there, as on a real /dev/shm.
    assert_eq!(run(a, "stat -c %a /dev/shm"), "1777\n");
    // A file made in the machine's /dev/shm is not on the hosts either.
    let outside = Path::new("/dev/shm").join(format!("{file}-outside"));
    std::fs::write(&outside, "x").expect("write /dev/shm");
    let seen = run(a, "ls -a /dev/shm");
    std::fs::remove_file(&outside).expect("remove");
    assert!(
        !seen.contains("-outside"),
        "host a sees the machine's /dev/shm: {seen}"
    );
}

#[test]
fn commands_run_in_the_host_with_the_callers_working_dir() {
    if !root_or_skip("commands_run_in_the_host_with_the_callers_working_dir") {
        return;
    }
    let _watchdog = Watchdog::new(
        "commands_run_in_the_host_with_the_callers_working_dir",
        TEST_LIMIT,
    );
    let net = Net::new(2).expect("make a net");
    let host = net.host(1);
    let out = host
        .command("sh")
        .args(["-c", "pwd; ip -4 -o addr show dev eth0"])
        .current_dir("/tmp")
        .output()
        .expect("run in the host");
    assert!(out.status.success(), "{out:?}");
    let out = String::from_utf8_lossy(&out.stdout);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("/tmp"));
    let addr = format!("inet {}/24", host.addr());
    assert!(lines.next().is_some_and(|l| l.contains(&addr)), "{out}");
    // A failing script is an error carrying its stderr.
    let err = host.run("echo bad thing >&2; exit 3").unwrap_err();
    assert!(err.to_string().contains("bad thing"), "{err}");
}

#[test]
fn partition_blocks_and_heal_restores_tcp() {
    if !root_or_skip("partition_blocks_and_heal_restores_tcp") {
        return;
    }
    let _watchdog = Watchdog::new("partition_blocks_and_heal_restores_tcp", TEST_LIMIT);
    let net = Net::new(3).expect("make a net");
    let listeners: Vec<Listener> = net.hosts().iter().map(listen).collect();
    let mut clients: Vec<Client> = net.hosts().iter().map(Client::new).collect();
    clients[0].reaches(listeners[1].addr);
    clients[1].reaches(listeners[0].addr);

    net.partition(0, 1).expect("partition");
    clients[0].blocked(listeners[1].addr);
    clients[1].blocked(listeners[0].addr);
    // Only the two hosts are cut off from each other.
    clients[0].reaches(listeners[2].addr);
    clients[1].reaches(listeners[2].addr);
    clients[2].reaches(listeners[0].addr);
    // A second partition is no error, and healing it in the other order ends it.
    net.partition(1, 0).expect("partition again");
    net.heal(1, 0).expect("heal");
    clients[0].reaches(listeners[1].addr);
    clients[1].reaches(listeners[0].addr);
    net.heal(0, 1).expect("heal what is healed");

    assert!(
        net.partition(2, 2).is_err(),
        "a host partitioned from itself"
    );
}

#[test]
fn total_loss_blocks_and_clear_loss_restores_tcp() {
    if !root_or_skip("total_loss_blocks_and_clear_loss_restores_tcp") {
        return;
    }
    let _watchdog = Watchdog::new("total_loss_blocks_and_clear_loss_restores_tcp", TEST_LIMIT);
    let net = Net::new(2).expect("make a net");
    let (a, b) = (net.host(0), net.host(1));
    let (la, lb) = (listen(a), listen(b));
    let (mut ca, mut cb) = (Client::new(a), Client::new(b));
    cb.reaches(la.addr);

    net.loss(0, 100).expect("loss");
    cb.blocked(la.addr);
    ca.blocked(lb.addr);
    // Loss is on the host's interface only: its own loopback works.
    ca.reaches(la.addr);

    net.clear_loss(0).expect("clear loss");
    cb.reaches(la.addr);
    ca.reaches(lb.addr);

    // A partial rate is a random drop rule, replaced by the next call, with the partition's
    // rules beside it.
    net.loss(1, 30).expect("loss 30");
    net.loss(1, 20).expect("loss 20");
    net.partition(0, 1).expect("partition");
    let rules = run(b, "nft list table inet shmesh");
    assert!(rules.contains("numgen random mod 100 < 20 drop"), "{rules}");
    assert!(!rules.contains("< 30"), "{rules}");
    assert!(
        rules.contains(&format!("ip saddr {} drop", a.addr())),
        "{rules}"
    );
    net.heal(0, 1).expect("heal");
    net.clear_loss(1).expect("clear loss");
    net.clear_loss(1).expect("clear no loss");
    assert!(
        b.run("nft list table inet shmesh").is_err(),
        "the table stays"
    );

    let err = net.loss(0, 101).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
}

#[test]
fn link_down_blocks_and_link_up_restores_tcp() {
    if !root_or_skip("link_down_blocks_and_link_up_restores_tcp") {
        return;
    }
    let _watchdog = Watchdog::new("link_down_blocks_and_link_up_restores_tcp", TEST_LIMIT);
    for hosts in [2, 3] {
        let net = Net::new(hosts).expect("make a net");
        let (a, b) = (net.host(0), net.host(1));
        let lb = listen(b);
        let la = listen(a);
        let (mut ca, mut cb) = (Client::new(a), Client::new(b));
        ca.reaches(lb.addr);

        net.link_down(1).expect("link down");
        ca.blocked(lb.addr);
        cb.blocked(la.addr);
        net.link_up(1).expect("link up");
        let addr = format!("inet {}/24", b.addr());
        assert!(run(b, "ip -4 -o addr show dev eth0").contains(&addr));
        ca.reaches(lb.addr);
        cb.reaches(la.addr);
        // A second flap, and an up of a link that is up.
        net.link_down(1).expect("link down");
        net.link_up(1).expect("link up");
        net.link_up(1).expect("link up again");
        ca.reaches(lb.addr);
    }
}

#[test]
fn rate_limit_puts_a_token_bucket_on_the_path_and_clear_removes_it() {
    if !root_or_skip("rate_limit_puts_a_token_bucket_on_the_path_and_clear_removes_it") {
        return;
    }
    let _watchdog = Watchdog::new(
        "rate_limit_puts_a_token_bucket_on_the_path_and_clear_removes_it",
        TEST_LIMIT,
    );
    let net = Net::new(2).expect("make a net");
    let (a, b) = (net.host(0), net.host(1));
    let lb = listen(b);
    let mut ca = Client::new(a);

    net.limit_rate(0, "8mbit").expect("limit rate");
    net.limit_rate(0, "4mbit").expect("replace the rate");
    let qdisc = run(a, "tc qdisc show dev eth0 root");
    assert!(
        qdisc.contains("tbf") && qdisc.contains("rate 4Mbit"),
        "{qdisc}"
    );
    // Host a's packets go through the bucket.
    ca.reaches(lb.addr);
    let stats = run(a, "tc -s qdisc show dev eth0 root");
    let sent: u64 = stats
        .split_whitespace()
        .skip_while(|w| *w != "Sent")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no Sent count in {stats}"));
    assert!(sent > 0, "nothing went through the bucket: {stats}");

    net.clear_rate(0).expect("clear rate");
    assert!(!run(a, "tc qdisc show dev eth0 root").contains("tbf"));
    net.clear_rate(0).expect("clear no rate");
    ca.reaches(lb.addr);

    assert!(net.limit_rate(0, "fast").is_err(), "a rate tc cannot parse");
}

#[test]
fn drop_kills_the_hosts_processes_and_leaves_nothing() {
    if !root_or_skip("drop_kills_the_hosts_processes_and_leaves_nothing") {
        return;
    }
    let _watchdog = Watchdog::new(
        "drop_kills_the_hosts_processes_and_leaves_nothing",
        TEST_LIMIT,
    );
    let veths = root_veths();
    for hosts in [1, 2, 3] {
        let net = Net::new(hosts).expect("make a net");
        let leftovers = Leftovers::of(&net);
        // A process that would run until its stdin closes, which only its end does here.
        let mut listener = net.host(0).spawn("listen", &[&net.host(0).addr()]);
        listener.expect("port");
        net.host(0).run("echo x > /dev/shm/left").expect("write");
        drop(net);
        leftovers.assert_none();
        let status = listener.wait();
        assert!(
            !status.success(),
            "the host's process was not killed: {status}"
        );
    }
    let now = root_veths();
    assert!(
        now.is_subset(&veths),
        "veths appeared: {now:?}, before {veths:?}"
    );
}

#[test]
fn drop_during_a_panic_leaves_nothing() {
    if !root_or_skip("drop_during_a_panic_leaves_nothing") {
        return;
    }
    let _watchdog = Watchdog::new("drop_during_a_panic_leaves_nothing", TEST_LIMIT);
    let mut seen = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let net = Net::new(3).expect("make a net");
        seen = Some(Leftovers::of(&net));
        let mut proc = net.host(2).spawn("listen", &[&net.host(2).addr()]);
        proc.expect("port");
        net.partition(0, 1).expect("partition");
        panic!("a test fails while its net is up");
    }));
    assert!(result.is_err());
    seen.expect("the net was made").assert_none();
}

#[test]
fn a_net_left_by_a_killed_process_is_removed_by_the_next_net() {
    if !root_or_skip("a_net_left_by_a_killed_process_is_removed_by_the_next_net") {
        return;
    }
    let _watchdog = Watchdog::new(
        "a_net_left_by_a_killed_process_is_removed_by_the_next_net",
        TEST_LIMIT,
    );
    let mut owner = Proc::spawn("make-net", &[]);
    let name = owner.expect("net");
    let stale = Leftovers {
        net: name.clone(),
        namespaces: vec![format!("{name}h0"), format!("{name}h1")],
        dir: PathBuf::from(format!("{RUN_DIR}/{name}")),
    };
    assert!(netns_list().contains(&stale.namespaces[1]));
    assert!(stale.dir.exists());
    // Killed: its net never drops.
    owner.kill();
    let net = Net::new(1).expect("make a net");
    stale.assert_none();
    drop(net);
}

#[test]
fn bad_sizes_are_errors() {
    let err = Net::new(0).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    let err = Net::new(254).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
}
