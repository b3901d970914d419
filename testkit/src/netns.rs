//! Test hosts made of network namespaces, each with its own `/dev/shm`, and the faults a test
//! injects between them (partition, packet loss, link flap, rate limit).
//!
//! A [`Net`] of `n` hosts is, per host, a network namespace made with `ip netns add` (so
//! `ip netns list` shows it) and a persistent mount namespace whose `/dev/shm` is a fresh tmpfs:
//! a segment one host creates is invisible to every other host and to the machine itself, so a
//! mirrored ring can have the same name on both ends. Two hosts are joined by one veth pair; one
//! host or three and more get one veth each to a Linux bridge in a "switch" namespace. Every
//! interface is created inside its namespace, so nothing ever appears in the machine's own
//! network namespace and nothing there can be reached from a host.
//!
//! Programs run inside a host through `nsenter` ([`Host::command`], [`Host::run`],
//! [`Host::spawn`]). The mount namespaces follow the recipe of `unshare(1)`: a private bind
//! mount of a directory under [`RUN_DIR`] holds one `<host>.mnt` file per host, onto which
//! `unshare --mount=<file>` binds the namespace it made.
//!
//! Everything needs root (`CAP_SYS_ADMIN` and `CAP_NET_ADMIN`), `ip` and `tc` (iproute2),
//! `nsenter`, `unshare` and `mount` (util-linux), and `nft` (nftables) for partitions and loss;
//! tests call [`root_or_skip`] first. Dropping the [`Net`] (also while a test panics) kills the
//! processes still inside its hosts and removes its namespaces, mounts and directory;
//! [`Net::new`] also removes what a test binary that died without unwinding left behind.
//!
//! # Examples
//!
//! ```no_run
//! use shmesh_testkit::netns::{root_or_skip, Net};
//!
//! if root_or_skip("doc_example") {
//!     let net = Net::new(2).unwrap();
//!     let (a, b) = (net.host(0), net.host(1));
//!     a.run("echo hi > /dev/shm/ring").unwrap();
//!     assert_eq!(b.run("ls /dev/shm").unwrap(), "");
//!     net.partition(0, 1).unwrap();
//!     // ... b cannot reach a.addr() now ...
//!     net.heal(0, 1).unwrap();
//! }
//! ```

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fmt::{Display, Write as _};
use std::fs;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::{child_command, is_root, this_exe, Proc, DEADLINE};

/// Set to `1` (CI does) to make [`root_or_skip`] fail instead of skip when namespaces are
/// unavailable.
pub const REQUIRE_ENV: &str = "SHMESH_REQUIRE_NETNS";
/// The directory under which each [`Net`] keeps its mount-namespace files
/// (`<RUN_DIR>/<net name>/<host name>.mnt`).
pub const RUN_DIR: &str = "/run/shmesh-test";
/// The name of every host's interface, inside the host's network namespace.
pub const IFACE: &str = "eth0";
/// The size limit of each host's `/dev/shm` tmpfs.
pub const SHM_SIZE: &str = "512m";

/// Where `ip netns add` puts the network namespace files.
const NETNS_DIR: &str = "/run/netns";
/// Prefix of every name a [`Net`] makes; followed by the pid and a counter.
const PREFIX: &str = "shm";
/// The bridge device of the switch namespace.
const BRIDGE: &str = "br0";
/// The nftables table the faults live in, inside a host's network namespace.
const NFT_TABLE: &str = "shmesh";
/// Subnets 10.200.0.0/24 ..= 10.249.255.0/24 are handed out to nets.
const SUBNETS: u32 = 50 * 256;
/// At most this many hosts per net (addresses .1 ..= .253 of a /24).
const MAX_HOSTS: usize = 253;

/// Numbers the nets of this process.
static NEXT_NET: AtomicU32 = AtomicU32::new(0);

/// Whether this test can build network namespaces: true when running as root and `ip`,
/// `unshare` and a new network namespace work. Otherwise prints
/// `skipped: <test> needs root (network namespaces)` to stderr and returns false, or panics
/// when the environment variable [`REQUIRE_ENV`] is `1` (CI sets it so these tests cannot be
/// skipped silently).
///
/// # Panics
///
/// When namespaces are unavailable and [`REQUIRE_ENV`] is `1`.
pub fn root_or_skip(test: &str) -> bool {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    let probe = PROBE.get_or_init(probe_namespaces);
    match probe {
        Ok(()) => true,
        Err(why) => {
            if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
                panic!(
                    "{test}: this test needs root for network namespaces; CI sets \
                     {REQUIRE_ENV}=1 so it cannot be skipped ({why})"
                );
            }
            eprintln!("skipped: {test} needs root (network namespaces): {why}");
            false
        }
    }
}

fn probe_namespaces() -> Result<(), String> {
    if !is_root() {
        return Err("not running as root (effective uid is not 0)".into());
    }
    let mut ip = Command::new("ip");
    ip.arg("-V");
    run_checked(ip).map_err(|e| format!("{e}; install iproute2"))?;
    let mut unshare = Command::new("unshare");
    unshare.args(["--net", "--mount", "true"]);
    run_checked(unshare).map_err(|e| {
        format!("{e}; install util-linux and run with CAP_SYS_ADMIN and CAP_NET_ADMIN")
    })?;
    Ok(())
}

/// One host of a [`Net`]: a network namespace with one interface ([`IFACE`]) holding
/// [`addr`](Host::addr), and a mount namespace with a private `/dev/shm`.
#[derive(Debug)]
pub struct Host {
    name: String,
    addr: Ipv4Addr,
    mnt: PathBuf,
}

impl Host {
    /// The host's name: that of its network namespace (`ip netns list`), unique on the machine.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's address, on its interface [`IFACE`]; every host of the net reaches it.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The path of the host's network namespace (`/run/netns/<name>`).
    pub fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// The `nsenter` arguments that enter the host, up to and including `--`. The working
    /// directory of the program is that of `nsenter` (`--wd=.`), so
    /// [`Command::current_dir`] works as usual.
    pub fn nsenter_args(&self) -> Vec<OsString> {
        let mut net = OsString::from("--net=");
        net.push(self.netns_path());
        let mut mount = OsString::from("--mount=");
        mount.push(&self.mnt);
        vec![net, mount, "--wd=.".into(), "--".into()]
    }

    /// A command that runs `program` inside the host (its network and mount namespaces), as
    /// `nsenter ... -- program`; add arguments, environment and stdio as for any [`Command`].
    /// The process is the program itself (`nsenter` execs it), so killing the child kills the
    /// program. Processes still running in the host when the [`Net`] drops are killed.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # let net = shmesh_testkit::netns::Net::new(2).unwrap();
    /// let status = net.host(0).command("ls").arg("/dev/shm").status().unwrap();
    /// assert!(status.success());
    /// ```
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(self.nsenter_args()).arg(program);
        cmd
    }

    /// Runs the shell script `script` (`sh -c`) inside the host and returns its stdout.
    ///
    /// # Errors
    ///
    /// When the script cannot start, exits non-zero (the message carries its stderr), or is
    /// still running (or a process it started still holds its output open) after
    /// [`DEADLINE`].
    pub fn run(&self, script: &str) -> io::Result<String> {
        let mut cmd = self.command("sh");
        cmd.arg("-c").arg(script);
        run_checked(cmd)
    }

    /// Runs this test binary inside the host as the child `role` with `args` (see
    /// [`child_command`] and [`Proc`]); the child is killed and reaped when the [`Proc`]
    /// drops.
    pub fn spawn(&self, role: &str, args: &[&dyn Display]) -> Proc {
        let prefix: Vec<String> = self
            .nsenter_args()
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
        let cmd = child_command(Some(("nsenter", &prefix)), &this_exe(), role, args);
        Proc::spawn_cmd(&format!("{role}@{}", self.name), cmd)
    }
}

/// The faults in force on one host: what its nftables table says.
#[derive(Debug, Default)]
struct Faults {
    /// Addresses the host exchanges no packets with.
    blocked: BTreeSet<Ipv4Addr>,
    /// Percent of the packets in and out of [`IFACE`] dropped at random (0 ..= 100).
    loss: u8,
}

/// A set of test hosts on one network (see the [module docs](self)). Dropping it removes
/// every namespace, mount and directory it made, and kills the processes still inside its
/// hosts; the same happens with [`close`](Net::close), which reports what it could not remove.
#[derive(Debug)]
pub struct Net {
    name: String,
    dir: PathBuf,
    hosts: Vec<Host>,
    /// The switch namespace, for nets of one host or of three and more.
    switch: Option<String>,
    faults: Mutex<Vec<Faults>>,
    closed: bool,
}

impl Net {
    /// Makes `n_hosts` hosts (1 ..= 253), all reaching each other: host `i` has address
    /// `10.<200 + s / 256>.<s % 256>.<i + 1>/24`, the subnet `s` derived from the pid and a
    /// counter so that the nets of parallel tests differ. Also removes the nets of test
    /// processes that are gone (killed before they could clean up).
    ///
    /// # Errors
    ///
    /// When `n_hosts` is out of range, or a tool fails (the message names the command and
    /// carries its stderr); what was made is removed again.
    pub fn new(n_hosts: usize) -> io::Result<Net> {
        if !(1..=MAX_HOSTS).contains(&n_hosts) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a Net has 1 to {MAX_HOSTS} hosts, not {n_hosts}"),
            ));
        }
        sweep_stale();
        let pid = std::process::id();
        let id = NEXT_NET.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{pid}n{id}");
        let subnet = (pid.wrapping_mul(97).wrapping_add(id)) % SUBNETS;
        let octets = |host: usize| {
            Ipv4Addr::new(
                10,
                (200 + subnet / 256) as u8,
                (subnet % 256) as u8,
                host as u8 + 1,
            )
        };
        let mut net = Net {
            dir: Path::new(RUN_DIR).join(&name),
            name,
            hosts: Vec::with_capacity(n_hosts),
            switch: None,
            faults: Mutex::new((0..n_hosts).map(|_| Faults::default()).collect()),
            closed: false,
        };
        // From here on, dropping `net` on an error removes what was made.
        net.make_mount_dir()?;
        for i in 0..n_hosts {
            net.add_host(i, octets(i))?;
        }
        net.link_hosts()?;
        for host in &net.hosts {
            let cidr = format!("{}/24", host.addr);
            ip(&["-n", &host.name, "addr", "add", &cidr, "dev", IFACE])?;
            ip(&["-n", &host.name, "link", "set", IFACE, "up"])?;
        }
        Ok(net)
    }

    /// The net's name, the prefix of its hosts' names.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Host `i` (0-based).
    ///
    /// # Panics
    ///
    /// When the net has no host `i`.
    pub fn host(&self, i: usize) -> &Host {
        self.hosts.get(i).unwrap_or_else(|| {
            panic!(
                "net {} has {} hosts, there is no host {i}",
                self.name,
                self.hosts.len()
            )
        })
    }

    /// All hosts, in order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The directory holding the hosts' mount-namespace files (a private bind mount).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Drops every packet between hosts `a` and `b`, both ways, until [`heal`](Net::heal):
    /// each host's nftables table drops what comes from or goes to the other's address.
    ///
    /// # Errors
    ///
    /// When `a == b` or `nft` fails.
    ///
    /// # Panics
    ///
    /// When the net has no host `a` or `b`.
    pub fn partition(&self, a: usize, b: usize) -> io::Result<()> {
        self.set_blocked(a, b, true)
    }

    /// Ends a [`partition`](Net::partition) between `a` and `b` (in either order); does
    /// nothing when there is none.
    ///
    /// # Errors
    ///
    /// When `a == b` or `nft` fails.
    ///
    /// # Panics
    ///
    /// When the net has no host `a` or `b`.
    pub fn heal(&self, a: usize, b: usize) -> io::Result<()> {
        self.set_blocked(a, b, false)
    }

    /// Drops `percent` percent of the packets into and out of host `a`'s interface, picked at
    /// random (nftables `numgen random mod 100 < percent`), until [`clear_loss`](Net::clear_loss).
    /// A new call replaces the rate.
    ///
    /// # Errors
    ///
    /// When `percent > 100` or `nft` fails.
    ///
    /// # Panics
    ///
    /// When the net has no host `a`.
    pub fn loss(&self, a: usize, percent: u8) -> io::Result<()> {
        if percent > 100 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a loss rate is 0 to 100 percent, not {percent}"),
            ));
        }
        self.host(a);
        let mut faults = self.lock_faults();
        faults[a].loss = percent;
        self.apply_faults(a, &faults[a])
    }

    /// Ends the packet [`loss`](Net::loss) of host `a`; does nothing when there is none.
    ///
    /// # Errors
    ///
    /// When `nft` fails.
    ///
    /// # Panics
    ///
    /// When the net has no host `a`.
    pub fn clear_loss(&self, a: usize) -> io::Result<()> {
        self.loss(a, 0)
    }

    /// Takes host `a`'s interface down (`ip link set eth0 down`): its connections see the
    /// network unreachable until [`link_up`](Net::link_up).
    ///
    /// # Errors
    ///
    /// When `ip` fails.
    ///
    /// # Panics
    ///
    /// When the net has no host `a`.
    pub fn link_down(&self, a: usize) -> io::Result<()> {
        let host = self.host(a);
        ip(&["-n", &host.name, "link", "set", IFACE, "down"])?;
        Ok(())
    }

    /// Brings host `a`'s interface back up, with its address and the route to the net.
    ///
    /// # Errors
    ///
    /// When `ip` fails.
    ///
    /// # Panics
    ///
    /// When the net has no host `a`.
    pub fn link_up(&self, a: usize) -> io::Result<()> {
        let host = self.host(a);
        ip(&["-n", &host.name, "link", "set", IFACE, "up"])?;
        // The kernel keeps IPv4 addresses over a flap and restores their prefix routes on
        // up; `replace` makes sure of both without failing when they are there.
        let cidr = format!("{}/24", host.addr);
        ip(&["-n", &host.name, "addr", "replace", &cidr, "dev", IFACE])?;
        Ok(())
    }

    /// Limits what host `a` sends to `rate` (a `tc` rate such as `"8mbit"`) with a token
    /// bucket: `tc qdisc replace dev eth0 root tbf rate <rate> burst 32kbit latency 400ms`.
    /// A new call replaces the rate.
    ///
    /// # Errors
    ///
    /// When `tc` fails, e.g. on a rate it cannot parse.
    ///
    /// # Panics
    ///
    /// When the net has no host `a`.
    pub fn limit_rate(&self, a: usize, rate: &str) -> io::Result<()> {
        let host = self.host(a);
        tc(&[
            "-n", &host.name, "qdisc", "replace", "dev", IFACE, "root", "tbf", "rate", rate,
            "burst", "32kbit", "latency", "400ms",
        ])?;
        Ok(())
    }

    /// Ends the [`limit_rate`](Net::limit_rate) of host `a`; does nothing when there is none.
    ///
    /// # Errors
    ///
    /// When `tc` fails.
    ///
    /// # Panics
    ///
    /// When the net has no host `a`.
    pub fn clear_rate(&self, a: usize) -> io::Result<()> {
        let host = self.host(a);
        let qdiscs = tc(&["-n", &host.name, "qdisc", "show", "dev", IFACE, "root"])?;
        if qdiscs.contains("qdisc tbf") {
            tc(&["-n", &host.name, "qdisc", "del", "dev", IFACE, "root"])?;
        }
        Ok(())
    }

    /// Removes everything the net made (what dropping it does) and says what it could not
    /// remove.
    ///
    /// # Errors
    ///
    /// Lists every step that failed; the others were done.
    pub fn close(mut self) -> io::Result<()> {
        self.closed = true;
        cleanup(&self.dir, &self.namespaces(), &self.hosts)
    }

    fn namespaces(&self) -> Vec<String> {
        let mut names: Vec<String> = self.hosts.iter().map(|h| h.name.clone()).collect();
        names.extend(self.switch.clone());
        names
    }

    fn lock_faults(&self) -> std::sync::MutexGuard<'_, Vec<Faults>> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_blocked(&self, a: usize, b: usize, blocked: bool) -> io::Result<()> {
        let (ha, hb) = (self.host(a), self.host(b));
        if a == b {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a partition is between two hosts; both are host {a}"),
            ));
        }
        let mut faults = self.lock_faults();
        for (i, other) in [(a, hb.addr), (b, ha.addr)] {
            if blocked {
                faults[i].blocked.insert(other);
            } else {
                faults[i].blocked.remove(&other);
            }
            self.apply_faults(i, &faults[i])?;
        }
        Ok(())
    }

    /// Replaces host `i`'s nftables table, in one transaction, with one made of `faults`
    /// (no table at all when there are none).
    fn apply_faults(&self, i: usize, faults: &Faults) -> io::Result<()> {
        let host = &self.hosts[i];
        // Creating the table first makes the delete succeed when there was none.
        let mut script = format!("table inet {NFT_TABLE} {{}}\ndelete table inet {NFT_TABLE}\n");
        if !faults.blocked.is_empty() || faults.loss > 0 {
            let mut input = String::new();
            let mut output = String::new();
            if !faults.blocked.is_empty() {
                let set: Vec<String> = faults.blocked.iter().map(|a| a.to_string()).collect();
                let set = set.join(", ");
                let _ = writeln!(input, "    ip saddr {{ {set} }} drop");
                let _ = writeln!(output, "    ip daddr {{ {set} }} drop");
            }
            if faults.loss > 0 {
                // `numgen random mod 100` is 0 ..= 99: 100 percent is a plain drop.
                let random = match faults.loss {
                    100 => String::new(),
                    loss => format!("numgen random mod 100 < {loss} "),
                };
                let _ = writeln!(input, "    iifname \"{IFACE}\" {random}drop");
                let _ = writeln!(output, "    oifname \"{IFACE}\" {random}drop");
            }
            let _ = write!(
                script,
                "table inet {NFT_TABLE} {{\n\
                 \x20 chain input {{\n    type filter hook input priority -10; policy accept;\n\
                 {input}  }}\n\
                 \x20 chain output {{\n    type filter hook output priority -10; policy accept;\n\
                 {output}  }}\n}}\n"
            );
        }
        let mut cmd = Command::new("nsenter");
        let mut net = OsString::from("--net=");
        net.push(host.netns_path());
        cmd.arg(net).args(["--", "nft", "-f", "-"]);
        run_with_input(cmd, Some(script.as_bytes()))?;
        Ok(())
    }

    fn make_mount_dir(&self) -> io::Result<()> {
        fs::create_dir_all(&self.dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot create {}: {e}", self.dir.display()),
            )
        })?;
        let dir = self.dir.to_string_lossy();
        tool("mount", &["--bind", &dir, &dir])?;
        tool("mount", &["--make-private", &dir])?;
        Ok(())
    }

    fn add_host(&mut self, i: usize, addr: Ipv4Addr) -> io::Result<()> {
        let name = format!("{}h{i}", self.name);
        let mnt = self.dir.join(format!("{name}.mnt"));
        ip(&["netns", "add", &name])?;
        self.hosts.push(Host {
            name: name.clone(),
            addr,
            mnt: mnt.clone(),
        });
        fs::File::create(&mnt).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot create {}: {e}", mnt.display()))
        })?;
        // The new mount namespace starts as a copy of ours: give it its own /dev/shm, and
        // detach its copies of namespace files (other hosts' and other nets'), which would
        // otherwise keep those namespaces alive as long as this one.
        let script = format!(
            "mount -t tmpfs -o size={SHM_SIZE},mode=1777 shmesh-shm /dev/shm || exit 1\n\
             for m in $(awk '$3 == \"nsfs\" {{print $2}}' /proc/self/mounts | sort -r); do\n\
             \x20 umount -l \"$m\" 2>/dev/null\n\
             done\n\
             exit 0"
        );
        let mut mount_arg = OsString::from("--mount=");
        mount_arg.push(&mnt);
        let mut cmd = Command::new("unshare");
        cmd.arg(mount_arg)
            .args(["--propagation", "private", "sh", "-c", &script]);
        run_checked(cmd)?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    fn link_hosts(&mut self) -> io::Result<()> {
        if let [a, b] = &self.hosts[..] {
            return ip(&[
                "link", "add", IFACE, "netns", &a.name, "type", "veth", "peer", "name", IFACE,
                "netns", &b.name,
            ])
            .map(drop);
        }
        let switch = format!("{}sw", self.name);
        ip(&["netns", "add", &switch])?;
        self.switch = Some(switch.clone());
        ip(&["-n", &switch, "link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", BRIDGE, "up"])?;
        for (i, host) in self.hosts.iter().enumerate() {
            let port = format!("p{i}");
            ip(&[
                "link", "add", IFACE, "netns", &host.name, "type", "veth", "peer", "name", &port,
                "netns", &switch,
            ])?;
            ip(&["-n", &switch, "link", "set", &port, "master", BRIDGE])?;
            ip(&["-n", &switch, "link", "set", &port, "up"])?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        if let Err(e) = cleanup(&self.dir, &self.namespaces(), &self.hosts) {
            eprintln!("net {}: cleanup incomplete: {e}", self.name);
        }
    }
}

/// Removes a net: kills the processes in its namespaces, unmounts its hosts' mount
/// namespaces and its directory, deletes its network namespaces. Every step is skipped when
/// already done, so this can run again, on a net half made, or on one a dead process left.
fn cleanup(dir: &Path, namespaces: &[String], hosts: &[Host]) -> io::Result<()> {
    let mut errors = Vec::new();
    let existing: Vec<&String> = namespaces
        .iter()
        .filter(|ns| Path::new(NETNS_DIR).join(ns).exists())
        .collect();
    if let Err(e) = kill_all(&existing) {
        errors.push(e.to_string());
    }
    let mounts = mount_points();
    let mnts = hosts.iter().map(|h| h.mnt.clone());
    let mnts: Vec<PathBuf> = mnts.chain([dir.to_path_buf()]).collect();
    for mnt in mnts {
        if mounts.contains(&mnt) {
            if let Err(e) = tool("umount", &[&mnt.to_string_lossy()]) {
                errors.push(e.to_string());
            }
        }
    }
    if dir.exists() && !mount_points().contains(&dir.to_path_buf()) {
        if let Err(e) = fs::remove_dir_all(dir) {
            errors.push(format!("cannot remove {}: {e}", dir.display()));
        }
    }
    for ns in existing {
        if let Err(e) = ip(&["netns", "del", ns]) {
            errors.push(e.to_string());
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(io::Error::other(errors.join("; ")))
    }
}

/// SIGKILLs every process in the network namespaces `names` and waits (up to [`DEADLINE`])
/// until none is left (a killed child of ours that is not reaped yet counts as gone: a
/// zombie holds no namespace).
fn kill_all(names: &[&String]) -> io::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut pids = Vec::new();
        for ns in names {
            let out = ip(&["netns", "pids", ns])?;
            pids.extend(out.split_whitespace().map(str::to_owned));
        }
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "processes {} are still in namespaces {names:?} after SIGKILL",
                    pids.join(" ")
                ),
            ));
        }
        let mut kill = Command::new("kill");
        kill.arg("-KILL").args(&pids);
        // A process may end between the listing and the kill: not an error.
        let _ = run_with_input(kill, None);
        thread::sleep(Duration::from_millis(5));
    }
}

/// The mount points of our mount namespace.
fn mount_points() -> BTreeSet<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .collect()
}

/// Removes the nets of test processes that ended without cleaning up (killed, or aborted by
/// a watchdog): those whose names carry the pid of a process that no longer exists.
fn sweep_stale() {
    // One sweep at a time in this process: a second one would find a net half removed.
    static SWEEP: Mutex<()> = Mutex::new(());
    let _one = SWEEP.lock().unwrap_or_else(|e| e.into_inner());
    let mut nets = BTreeSet::new();
    let mut namespaces = Vec::new();
    if let Ok(entries) = fs::read_dir(NETNS_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(net) = parse_name(&name) {
                nets.insert(net.to_owned());
                namespaces.push(name);
            }
        }
    }
    if let Ok(entries) = fs::read_dir(RUN_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if parse_name(&name) == Some(name.as_str()) {
                nets.insert(name);
            }
        }
    }
    for net in nets {
        let Some(pid) = net
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('n'))
            .map(|(pid, _)| pid)
        else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        let dir = Path::new(RUN_DIR).join(&net);
        let mine: Vec<String> = namespaces
            .iter()
            .filter(|ns| parse_name(ns) == Some(net.as_str()))
            .cloned()
            .collect();
        let mut hosts = Vec::new();
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.path().extension() == Some(OsStr::new("mnt")) {
                    hosts.push(Host {
                        name: String::new(),
                        addr: Ipv4Addr::UNSPECIFIED,
                        mnt: entry.path(),
                    });
                }
            }
        }
        if let Err(e) = cleanup(&dir, &mine, &hosts) {
            eprintln!("cannot remove the stale test net {net}: {e}");
        }
    }
}

/// The net a namespace or directory name belongs to: `shm<pid>n<id>` followed by nothing,
/// `h<i>` or `sw`; `None` for names a [`Net`] does not make.
fn parse_name(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, rest) = rest.split_once('n')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) {
        return None;
    }
    let id_len = rest.bytes().take_while(u8::is_ascii_digit).count();
    if id_len == 0 {
        return None;
    }
    let suffix = &rest[id_len..];
    let ok = suffix.is_empty() || suffix == "sw" || suffix.strip_prefix('h').is_some_and(digits);
    ok.then(|| &name[..name.len() - suffix.len()])
}

fn ip(args: &[&str]) -> io::Result<String> {
    tool("ip", args)
}

fn tc(args: &[&str]) -> io::Result<String> {
    tool("tc", args)
}

fn tool(program: &str, args: &[&str]) -> io::Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_checked(cmd)
}

/// Runs `cmd` under [`DEADLINE`] and returns its stdout; an error unless it exits 0.
fn run_checked(cmd: Command) -> io::Result<String> {
    run_with_input(cmd, None)
}

/// Runs `cmd` with `input` on its stdin (or none), under [`DEADLINE`]; returns its stdout, or
/// an error naming the command with its status and stderr unless it exits 0.
fn run_with_input(mut cmd: Command, input: Option<&[u8]>) -> io::Result<String> {
    let shown = format!("{cmd:?}");
    let out = output_within(&mut cmd, input, DEADLINE).map_err(|e| {
        let hint = if e.kind() == io::ErrorKind::NotFound {
            " (not installed? it needs iproute2, util-linux and nftables)"
        } else {
            ""
        };
        io::Error::new(e.kind(), format!("{shown}: {e}{hint}"))
    })?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` to its end, with stdout and stderr captured; kills it and fails with
/// [`io::ErrorKind::TimedOut`] when it (or a process holding its output) runs past `limit`.
fn output_within(cmd: &mut Command, input: Option<&[u8]>, limit: Duration) -> io::Result<Output> {
    let deadline = Instant::now() + limit;
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        // A program that exits without reading all of it reports through its status.
        let _ = stdin.write_all(data);
    }
    let (tx, rx) = mpsc::channel();
    let readers: [Box<dyn Read + Send>; 2] = [
        Box::new(child.stdout.take().expect("piped stdout")),
        Box::new(child.stderr.take().expect("piped stderr")),
    ];
    for (which, mut pipe) in readers.into_iter().enumerate() {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send((which, buf));
        });
    }
    let timed_out = || {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("still running (or its output still open) after {limit:?}"),
        )
    };
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(timed_out());
        }
        thread::sleep(Duration::from_millis(1));
    };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let (which, buf) = rx.recv_timeout(left).map_err(|_| timed_out())?;
        if which == 0 {
            stdout = buf;
        } else {
            stderr = buf;
        }
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_name;

    #[test]
    fn names_of_nets_parse_and_others_do_not() {
        assert_eq!(parse_name("shm123n4"), Some("shm123n4"));
        assert_eq!(parse_name("shm123n4h0"), Some("shm123n4"));
        assert_eq!(parse_name("shm123n4h12"), Some("shm123n4"));
        assert_eq!(parse_name("shm123n45sw"), Some("shm123n45"));
        for other in [
            "shm",
            "shmn4",
            "shm12",
            "shm12n",
            "shm12nh0",
            "shm12n4h",
            "shm12n4x",
            "shmxn4",
            "ns1",
            "shm12n4swh0",
        ] {
            assert_eq!(parse_name(other), None, "{other}");
        }
    }
}
