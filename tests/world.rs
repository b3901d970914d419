//! `shmesh::world` between real processes: every test starts its ranks as processes of this
//! test binary, with the environment contract a launcher sets (`SHMESH_JOB`, `SHMESH_RANK`,
//! `SHMESH_SIZE`), and checks what each rank reports and that the job leaves nothing in
//! `/dev/shm`.
//!
//! Each rank is the `child_entry` test playing the role `rank <scenario> <args>` (see
//! `common/mod.rs` and `shmesh-testkit`): it joins the world, runs the scenario, checks every
//! result itself against a sequential reference (the inputs are a function of rank, index and
//! seed, so every rank can compute every other rank's), reports protocol lines, and ends with
//! `done <rank>`. A rank that panics exits at once without leaving the world in order, so the
//! others see it die (`PeerGone`) instead of waiting for it. Every wait of the parent has a deadline, every test a
//! watchdog, every job a unique id.
//!
//! | test | what it shows |
//! |------|---------------|
//! | `collectives_*` | barrier, broadcast, scatter, gather, all-gather, reduce and all-reduce (Sum, Min, Max, Product and a closure) for 1 to 8 ranks, every root, lengths 0, 1, 7, 64 KiB (the last recursive-doubling size) and ~100 KiB (the ring), of u64, i32 and u8, equal the sequential reference; f64 all-reduces are bit-identical on every rank |
//! | `large_collectives_*` | all-reduce and broadcast of 16 MiB + a few elements at 3 and 4 ranks |
//! | `p2p_rich_*` | rich typed messages (nested structs, strings, maps, enums; some of 100 KiB, in fragments) read in place, replies computed from the deserialized value |
//! | `p2p_any_*` | `Source::Any`/`Tag::Any` from three senders: each message once, in order per (source, tag) |
//! | `p2p_tags_*` | a receive by tag takes later messages first, the others wait in order; `Tag::Any` takes them in send order; reserved tags and unknown ranks are refused |
//! | `p2p_larger_than_the_ring_*` | 5 MiB messages through a 1 MiB ring: `recv_vec`, `recv_slice_into` (exact and larger buffer), typed, and one held while a later message is received |
//! | `truncated_*` | a too-small buffer gets `Truncated` and the message is consumed (whole, held, and in fragments: the rest of it is read too); `Misfit` |
//! | `self_send_*` | a rank sends to itself: typed, slices, non-blocking, found by `Source::Any` |
//! | `nonblocking_many_*` | hundreds of `isend`s (more than the ring holds) and `irecv`s posted out of order, completed by `wait`, `test`, `wait_any` and `wait_all`, each with its own message |
//! | `nonblocking_test_*` | `test` is false until the message is sent, then `wait` returns it; `wait_any` of nothing is an error |
//! | `large_exchanges_*` | two ranks (and four, all to all) send 8 MiB to each other at once, non-blocking and blocking: no deadlock |
//! | `oversubscribed_*` | 8 ranks on this machine's CPUs run hundreds of small collectives |
//! | `blocked_receive_*` | a rank blocked in `recv` for a second uses a small part of a second of CPU (it sleeps on the futex), with 2 and with 8 ranks |
//! | `rank_killing_itself_*`, `rank_killed_mid_*` | SIGKILL of rank 2 of 4 while the others loop on all-reduce: each gets `PeerGone(2)` (and every later collective too), then the survivors exchange messages; the dead rank's rings are the only ones left, and gc removes them |
//! | `receive_from_a_killed_rank_*` | what a killed rank sent is delivered, then `PeerGone`, for `recv`, `irecv` and a send larger than the ring; `Source::Any` reports the death once and goes on |
//! | `receive_gets_the_message_of_a_sender_that_left_*` | a receive waiting when its sender commits the message and leaves or dies gets the message (then `PeerGone`) |
//! | `nonblocking_receives_from_ranks_that_sent_everything_*` | the same for requests: every message is delivered |
//! | `nonblocking_receive_from_any_source_fails_*` | `wait` on an `irecv(Source::Any)` fails with `PeerGone` when every other rank is dead |
//! | `rank_that_left_*` | a collective whose data would come from a rank that left the world in order fails with `PeerGone` on every rank |
//! | `rank_that_never_starts_*` | `join_timeout` ends in `Rendezvous` naming the missing rank; nothing is left |
//! | `open_mpi_*` | ranks launched by Open MPI's `mpirun` meet (job id from the launcher) and reduce |

mod common;

use std::collections::HashMap;
use std::fmt::{Debug, Display};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    check_rich, child_command, child_role, rich, say, this_exe, wait_for_parent, Args, Proc, Rich,
    Rng, Shape, Watchdog, CHILD_ENV, DEADLINE, TEST_LIMIT,
};
use rkyv::{Archive, Deserialize, Serialize};
use shmesh::world::{
    env::MAX_JOB_LEN, ring_name, Completion, Element, Op, Request, Source, Tag, World, WorldError,
};

/// A short typed message with heap data: who sent it, with which tag, its number.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
struct Note {
    from: u32,
    tag: u32,
    seq: u32,
    text: String,
}

fn note(from: usize, tag: u32, seq: u32) -> Note {
    Note {
        from: from as u32,
        tag,
        seq,
        text: common::text(u64::from(seq) << 8 ^ from as u64, (seq % 40) as usize),
    }
}

/// Checks a received note against `note(from, tag, seq)`.
#[track_caller]
fn check_note(got: &ArchivedNote, from: usize, tag: u32, seq: u32) {
    let want = note(from, tag, seq);
    assert_eq!(
        (
            got.from.to_native(),
            got.tag.to_native(),
            got.seq.to_native()
        ),
        (want.from, want.tag, want.seq),
        "note from {from}, tag {tag}, number {seq}"
    );
    assert_eq!(
        got.text.as_str(),
        want.text,
        "text of note {from}/{tag}/{seq}"
    );
}

/// A message of any size: an id and bytes that depend on it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
struct Blob {
    id: u64,
    data: Vec<u8>,
}

fn blob(id: u64, len: usize) -> Blob {
    Blob {
        id,
        data: (0..len).map(|i| (i as u64 * 7 + id) as u8).collect(),
    }
}

// ---- jobs and ranks (the parent side) ----

/// A job id unique to a test and to this process, `w<pid>-<test>-<n>`. On drop, removes every
/// ring of the job something (a killed rank, a failed test) left in `/dev/shm`.
#[derive(Debug)]
struct Job(String);

impl Job {
    fn new(test: &str) -> Job {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "w{}-{test}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        assert!(id.len() <= MAX_JOB_LEN, "job id {id} is too long");
        Job(id)
    }

    /// The names (without `shmesh.`) of the job's segments in `/dev/shm`, sorted.
    fn segments(&self) -> Vec<String> {
        let head = format!("shmesh.world.{}.", self.0);
        let mut names: Vec<String> = std::fs::read_dir("/dev/shm")
            .expect("read /dev/shm")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&head))
            .map(|n| n["shmesh.".len()..].to_owned())
            .collect();
        names.sort();
        names
    }

    /// Asserts that the job left nothing in `/dev/shm`.
    #[track_caller]
    fn assert_clean(&self) {
        assert_eq!(
            self.segments(),
            Vec::<String>::new(),
            "rings of job {} left in /dev/shm after a clean run",
            self.0
        );
    }

    /// Asserts that what is left of the job is exactly the rings into the `dead` ranks (their
    /// creators died before removing them), and that removing unused segments, as
    /// `shmesh gc` does, removes them all.
    #[track_caller]
    fn assert_only_rings_of_dead(&self, size: usize, dead: &[usize]) {
        let mut want: Vec<String> = dead
            .iter()
            .flat_map(|&to| {
                (0..size)
                    .filter(move |&from| from != to)
                    .map(move |from| ring_name(&self.0, from, to))
            })
            .collect();
        want.sort();
        assert_eq!(self.segments(), want, "rings left by job {}", self.0);
        for name in &want {
            match shmesh_ring::Segment::remove_unused(name) {
                Ok(true) => {}
                other => panic!("gc of {name}, whose creator is dead: {other:?}"),
            }
        }
        self.assert_clean();
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        for name in self.segments() {
            let _ = shmesh_ring::Segment::remove(&name);
        }
    }
}

/// The processes of a job's ranks, each the child role `rank <scenario> <args>`.
struct Ranks {
    procs: Vec<(usize, Proc)>,
}

impl Ranks {
    /// Starts every rank of a job of `size`.
    fn start(job: &Job, size: usize, scenario: &str, args: &[&dyn Display]) -> Ranks {
        Ranks::start_some(job, size, 0..size, scenario, args)
    }

    /// Starts the ranks `ranks` of a job of `size` (the others never start).
    fn start_some(
        job: &Job,
        size: usize,
        ranks: impl IntoIterator<Item = usize>,
        scenario: &str,
        args: &[&dyn Display],
    ) -> Ranks {
        let mut all: Vec<&dyn Display> = vec![&scenario];
        all.extend_from_slice(args);
        let procs = ranks
            .into_iter()
            .map(|rank| {
                let mut cmd = child_command(None, &this_exe(), "rank", &all);
                cmd.env("SHMESH_JOB", &job.0)
                    .env("SHMESH_RANK", rank.to_string())
                    .env("SHMESH_SIZE", size.to_string())
                    .env_remove("SHMESH_JOIN_TIMEOUT")
                    .env_remove("SHMESH_SPINS");
                (
                    rank,
                    Proc::spawn_cmd(&format!("rank {rank} of {scenario}"), cmd),
                )
            })
            .collect();
        Ranks { procs }
    }

    fn rank(&mut self, rank: usize) -> &mut Proc {
        &mut self
            .procs
            .iter_mut()
            .find(|(r, _)| *r == rank)
            .expect("a rank that was started")
            .1
    }

    /// Waits for every rank (each within [`DEADLINE`]). The ranks in `killed` must have died
    /// of SIGKILL; every other must have exited 0 after saying `done <rank>`. Fails with the
    /// output of every rank that did not. Returns each rank's protocol lines (not taken yet),
    /// by rank.
    #[track_caller]
    fn finish(mut self, killed: &[usize]) -> HashMap<usize, Vec<String>> {
        let mut failures = String::new();
        let mut lines = HashMap::new();
        for (rank, proc) in &mut self.procs {
            let status = proc.wait();
            let rest = proc.remaining_lines();
            let ok = if killed.contains(rank) {
                status.signal() == Some(nix::sys::signal::Signal::SIGKILL as i32)
            } else {
                status.success() && rest.last().is_some_and(|l| *l == format!("done {rank}"))
            };
            if !ok {
                failures.push_str(&format!(
                    "--- rank {rank}: {status}{}, lines {rest:?}\n{}",
                    if killed.contains(rank) {
                        " (should have been killed)"
                    } else {
                        ""
                    },
                    proc.output()
                ));
            }
            lines.insert(*rank, rest);
        }
        assert!(failures.is_empty(), "ranks failed:\n{failures}");
        lines
    }
}

/// Runs a job of `size` ranks playing `scenario` to the end, checks it left nothing behind,
/// and returns each rank's protocol lines.
#[track_caller]
fn run_job(
    test: &str,
    size: usize,
    scenario: &str,
    args: &[&dyn Display],
) -> HashMap<usize, Vec<String>> {
    let job = Job::new(test);
    let lines = Ranks::start(&job, size, scenario, args).finish(&[]);
    job.assert_clean();
    lines
}

/// The values of the protocol lines `key <value>` among `lines`.
fn values<'a>(lines: &'a [String], key: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ').unwrap_or((l, ""));
            (k == key).then_some(v)
        })
        .collect()
}

// ---- the child side ----

/// Plays a child role when `SHMESH_TEST_CHILD` says so; passes at once otherwise.
#[test]
fn child_entry() {
    let Some((role, a)) = child_role() else {
        return;
    };
    exit_on_panic();
    match role.as_str() {
        "rank" => run_rank(a.s(0), &Args(a.0[1..].to_vec())),
        "mpi" => role_mpi(),
        other => panic!("unknown child role '{other}'"),
    }
}

/// A panic ends the rank at once (after printing it), without unwinding: its world is not
/// dropped, so the other ranks see a death and fail fast instead of waiting for it.
fn exit_on_panic() {
    let print = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        print(info);
        std::process::exit(101);
    }));
}

fn init() -> World {
    World::init().unwrap_or_else(|e| panic!("World::init: {e}"))
}

fn run_rank(scenario: &str, a: &Args) {
    if scenario == "rendezvous" {
        return rank_rendezvous(a.get(0));
    }
    let mut world = init();
    let w = &mut world;
    match scenario {
        "collectives" => rank_collectives(w, a.get(0)),
        "large" => rank_large(w, a.get(0)),
        "p2p_rich" => rank_p2p_rich(w),
        "p2p_any" => rank_p2p_any(w, a.get(0)),
        "p2p_tags" => rank_p2p_tags(w),
        "p2p_large" => rank_p2p_large(w),
        "truncated" => rank_truncated(w),
        "truncated_fragments" => rank_truncated_fragments(w),
        "self_send" => rank_self_send(w),
        "nb_many" => rank_nb_many(w, a.get(0)),
        "nb_test" => rank_nb_test(w),
        "exchange" => rank_exchange(w, a.get(0)),
        "small_many" => rank_small_many(w, a.get(0)),
        "idle" => rank_idle(w),
        "kill_self" => rank_kill_self(w, a.get(0)),
        "kill_looping" => rank_kill_looping(w),
        "recv_dead" => rank_recv_dead(w),
        "left_early" => rank_left_early(w),
        "sent_then_left" => rank_sent_then_left(w, a.s(0), a.s(1)),
        "irecv_any_dead" => rank_irecv_any_dead(w),
        "nb_many_then_leave" => rank_nb_many(w, a.get(0)),
        other => panic!("unknown scenario '{other}'"),
    }
    // The scenarios where every rank lives end with a barrier: no rank leaves while another
    // still waits for a message from it (a receive from a rank that left is the subject of
    // the tests that leave out this barrier).
    if matches!(
        scenario,
        "collectives"
            | "large"
            | "p2p_rich"
            | "p2p_any"
            | "p2p_tags"
            | "p2p_large"
            | "truncated"
            | "truncated_fragments"
            | "self_send"
            | "nb_many"
            | "nb_test"
            | "exchange"
            | "small_many"
            | "idle"
    ) {
        world.barrier().ok_or_die("the final barrier");
    }
    say("done", world.rank());
}

/// Unwraps a world result, naming the operation.
trait OrDie<T> {
    fn ok_or_die(self, what: impl Display) -> T;
}

impl<T> OrDie<T> for Result<T, WorldError> {
    #[track_caller]
    fn ok_or_die(self, what: impl Display) -> T {
        self.unwrap_or_else(|e| panic!("{what}: {e}"))
    }
}

/// Kills this process with SIGKILL: no unwinding, no exit handler, the world not left.
fn kill_me() -> ! {
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL).expect("raise SIGKILL");
    unreachable!("SIGKILL returned")
}

// ---- inputs and references ----

/// Element `i` of rank `rank`'s input in the run `seed`: 64 random bits.
fn mix(seed: u64, rank: usize, i: usize) -> u64 {
    Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ (rank as u64) << 48 ^ i as u64).next_u64()
}

/// The element types the tests reduce, with their own arithmetic for the references.
trait Num: Element + Debug {
    fn from_bits(x: u64) -> Self;
    fn wadd(self, o: Self) -> Self;
    fn wmul(self, o: Self) -> Self;
    fn xor(self, o: Self) -> Self;
}

macro_rules! num {
    ($($t:ty),*) => {$(
        impl Num for $t {
            fn from_bits(x: u64) -> Self {
                x as $t
            }
            fn wadd(self, o: Self) -> Self {
                self.wrapping_add(o)
            }
            fn wmul(self, o: Self) -> Self {
                self.wrapping_mul(o)
            }
            fn xor(self, o: Self) -> Self {
                self ^ o
            }
        }
    )*};
}

num!(u8, i32, u64);

/// `op` on two elements, computed by the test (not by the library's `Op`).
fn apply<E: Num>(op: Op, a: E, b: E) -> E {
    match op {
        Op::Sum => a.wadd(b),
        Op::Product => a.wmul(b),
        Op::Min => {
            if b < a {
                b
            } else {
                a
            }
        }
        Op::Max => {
            if b > a {
                b
            } else {
                a
            }
        }
    }
}

/// Every rank's input of `len` elements.
fn inputs<E: Num>(seed: u64, size: usize, len: usize) -> Vec<Vec<E>> {
    (0..size)
        .map(|r| (0..len).map(|i| E::from_bits(mix(seed, r, i))).collect())
        .collect()
}

/// The element-wise fold of every rank's input, rank 0 first.
fn fold<E: Num>(all: &[Vec<E>], f: impl Fn(E, E) -> E) -> Vec<E> {
    let mut acc = all[0].clone();
    for other in &all[1..] {
        acc.iter_mut().zip(other).for_each(|(a, &b)| *a = f(*a, b));
    }
    acc
}

/// Asserts two buffers are equal, naming the first element that differs.
#[track_caller]
fn same<E: PartialEq + Debug>(got: &[E], want: &[E], what: impl Display) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!(
            "{what}: element {i} of {} is {:?}, expected {:?}",
            got.len(),
            got[i],
            want[i]
        );
    }
}

// ---- collectives ----

/// The roots a collective of `len` elements is tried with: all of them for small buffers,
/// the first, last and middle rank for larger ones.
fn roots(size: usize, len: usize) -> Vec<usize> {
    if len <= 7 {
        (0..size).collect()
    } else {
        let mut r = vec![0, size - 1, size / 2];
        r.sort_unstable();
        r.dedup();
        r
    }
}

/// Runs every collective on buffers of `len` elements of `E` (the reductions with each of
/// `ops` and the closure `xor`; none when `ops` is empty) and checks each against the
/// reference. Returns how many collectives it checked.
fn check_collectives<E: Num>(world: &mut World, seed: u64, len: usize, ops: &[Op]) -> usize {
    let (n, r) = (world.size(), world.rank());
    let all = inputs::<E>(seed, n, len);
    let concat: Vec<E> = all.concat();
    let ty = std::any::type_name::<E>();
    let what = |c: &str, root: Option<usize>| {
        format!("{c} of {len} {ty} over {n} ranks (root {root:?}, rank {r})")
    };
    let mut checked = 0;
    for root in roots(n, len) {
        // Broadcast: the others start with their own data, which must be overwritten.
        let mut buf = all[r].clone();
        if r == root {
            buf.clone_from(&all[root]);
        }
        world
            .broadcast(root, &mut buf)
            .ok_or_die(what("broadcast", Some(root)));
        same(&buf, &all[root], what("broadcast", Some(root)));

        // Scatter: the root hands out block i to rank i; the others' send buffer is unread.
        let send: &[E] = if r == root { &concat } else { &[] };
        let mut recv = all[(r + 1) % n].clone();
        world
            .scatter(root, send, &mut recv)
            .ok_or_die(what("scatter", Some(root)));
        same(&recv, &all[r], what("scatter", Some(root)));

        // Gather: the others' receive buffer is unwritten (empty here).
        let mut recv = if r == root {
            vec![E::from_bits(0x5a); n * len]
        } else {
            Vec::new()
        };
        world
            .gather(root, &all[r], &mut recv)
            .ok_or_die(what("gather", Some(root)));
        if r == root {
            same(&recv, &concat, what("gather", Some(root)));
        }
        checked += 3;

        for &op in ops {
            let mut buf = all[r].clone();
            world
                .reduce(root, &mut buf, op)
                .ok_or_die(what(&format!("reduce {op:?}"), Some(root)));
            let want = if r == root {
                fold(&all, |a, b| apply(op, a, b))
            } else {
                all[r].clone()
            };
            same(&buf, &want, what(&format!("reduce {op:?}"), Some(root)));
            checked += 1;
        }
        if !ops.is_empty() {
            let mut buf = all[r].clone();
            world
                .reduce_with(root, &mut buf, E::xor)
                .ok_or_die(what("reduce_with xor", Some(root)));
            let want = if r == root {
                fold(&all, E::xor)
            } else {
                all[r].clone()
            };
            same(&buf, &want, what("reduce_with xor", Some(root)));
            checked += 1;
        }
    }

    let mut recv = vec![E::from_bits(0xa5); n * len];
    world
        .all_gather(&all[r], &mut recv)
        .ok_or_die(what("all_gather", None));
    same(&recv, &concat, what("all_gather", None));
    checked += 1;

    for &op in ops {
        let mut buf = all[r].clone();
        world
            .all_reduce(&mut buf, op)
            .ok_or_die(what(&format!("all_reduce {op:?}"), None));
        same(
            &buf,
            &fold(&all, |a, b| apply(op, a, b)),
            what(&format!("all_reduce {op:?}"), None),
        );
        checked += 1;
    }
    if !ops.is_empty() {
        let mut buf = all[r].clone();
        world
            .all_reduce_with(&mut buf, E::xor)
            .ok_or_die(what("all_reduce_with xor", None));
        same(&buf, &fold(&all, E::xor), what("all_reduce_with xor", None));
        checked += 1;
    }
    world.barrier().ok_or_die(what("barrier", None));
    checked + 1
}

/// A float whose magnitude varies over twenty orders, so that the order of a sum matters.
fn float(x: u64) -> f64 {
    let unit = (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
    unit * 10f64.powi((x % 21) as i32 - 10)
}

/// All-reduces (Sum, then Max) `len` floats; rank 0 receives every rank's result and checks
/// that they are bit-identical, and each rank checks its result is close to the sequential
/// sum (the order of the additions differs).
fn check_float_all_reduce(world: &mut World, seed: u64, len: usize) {
    let (n, r) = (world.size(), world.rank());
    let all: Vec<Vec<f64>> = (0..n)
        .map(|q| (0..len).map(|i| float(mix(seed, q, i))).collect())
        .collect();
    for op in [Op::Sum, Op::Max] {
        let mut buf = all[r].clone();
        world
            .all_reduce(&mut buf, op)
            .ok_or_die(format_args!("f64 all_reduce {op:?} of {len}"));
        for (i, got) in buf.iter().enumerate() {
            let column = all.iter().map(|v| v[i]);
            let (want, scale) = match op {
                Op::Sum => (
                    column.clone().sum::<f64>(),
                    column.map(f64::abs).sum::<f64>(),
                ),
                _ => (column.fold(f64::MIN, f64::max), 0.0),
            };
            assert!(
                (got - want).abs() <= scale * 1e-12,
                "f64 all_reduce {op:?} of {len} over {n}: element {i} is {got}, expected {want}"
            );
        }
        // Every rank sends its result to rank 0, which compares the bits.
        if r == 0 {
            for src in 1..n {
                let (status, theirs) = world
                    .recv_vec::<f64>(Source::Rank(src), Tag::Is(900))
                    .ok_or_die("receive a result");
                assert_eq!(status.len, len * 8);
                let differ = buf
                    .iter()
                    .zip(&theirs)
                    .position(|(a, b)| a.to_bits() != b.to_bits());
                assert_eq!(
                    differ, None,
                    "f64 all_reduce {op:?} of {len} over {n}: rank {src}'s result is not \
                     bit-identical to rank 0's"
                );
            }
        } else {
            world.send_slice(0, 900, &buf).ok_or_die("send a result");
        }
    }
}

fn rank_collectives(world: &mut World, seed: u64) {
    let mut checked = 0;
    const ALL: [Op; 4] = [Op::Sum, Op::Product, Op::Min, Op::Max];
    // u64: 8192 elements are 64 KiB, the largest recursive-doubling all-reduce; 12801 (100
    // KiB + 8 bytes) take the ring, in blocks of unequal sizes.
    for len in [0, 1, 7, 8192, 12_801] {
        checked += check_collectives::<u64>(world, seed ^ len as u64, len, &ALL);
    }
    for len in [7, 25_601] {
        checked += check_collectives::<i32>(world, seed ^ 0x132 ^ len as u64, len, &ALL);
    }
    // Bytes: odd lengths, elements smaller than any alignment.
    for len in [13, 100_003] {
        checked += check_collectives::<u8>(world, seed ^ 0x8 ^ len as u64, len, &[]);
    }
    for len in [0, 7, 12_801] {
        check_float_all_reduce(world, seed ^ 0xf ^ len as u64, len);
        checked += 2;
    }
    say("checked", checked);
}

/// 16 MiB + 3 elements: all-reduce (the ring, blocks of unequal sizes) and broadcast from the
/// last rank.
fn rank_large(world: &mut World, seed: u64) {
    let (n, r) = (world.size(), world.rank());
    let len = (16 << 20) / 8 + 3;
    let mine: Vec<u64> = (0..len).map(|i| mix(seed, r, i)).collect();
    let mut buf = mine.clone();
    world
        .all_reduce(&mut buf, Op::Sum)
        .ok_or_die("all_reduce 16 MiB");
    let want: Vec<u64> = (0..len)
        .map(|i| (0..n).fold(0u64, |acc, q| acc.wrapping_add(mix(seed, q, i))))
        .collect();
    same(&buf, &want, "all_reduce of 16 MiB");

    let root = n - 1;
    let mut buf = if r == root { mine } else { vec![0u64; len] };
    world
        .broadcast(root, &mut buf)
        .ok_or_die("broadcast 16 MiB");
    let want: Vec<u64> = (0..len).map(|i| mix(seed, root, i)).collect();
    same(&buf, &want, "broadcast of 16 MiB");
    say("checked", 2);
}

// ---- point to point ----

/// The reply to a rich request, computed from the deserialized value.
fn reply(mut r: Rich) -> Rich {
    r.seq += 1_000_000;
    r.name = r.name.chars().rev().collect();
    r.text.push_str(" (reply)");
    r.matrix.reverse();
    r.shapes.push(Shape::Point(r.shapes.len() as i32, -7));
    r.counts.insert("reply".into(), r.seq);
    r.flag = !r.flag;
    r
}

/// Rank 0 sends rich messages (every 50th with 100 KiB of text, so in fragments), strings,
/// vectors and enums; rank 1 checks each in place, deserializes it and answers.
fn rank_p2p_rich(world: &mut World) {
    const ROUNDS: u64 = 120;
    if world.rank() == 0 {
        for seq in 0..ROUNDS {
            world.send(1, 1, &rich(seq)).ok_or_die("send rich");
            let answer = world
                .recv::<Rich>(Source::Rank(1), Tag::Is(2))
                .ok_or_die("recv reply");
            assert_eq!((answer.source(), answer.tag()), (1, 2));
            check_rich(&answer, &reply(rich(seq)));
        }
        let shapes = [
            Shape::Empty,
            Shape::Point(-3, i64::MIN),
            Shape::Labeled {
                label: "grüße 🚀".into(),
                weights: vec![0.5, -1.25, f64::MAX],
            },
        ];
        for shape in &shapes {
            world.send(1, 3, shape).ok_or_die("send shape");
        }
        world
            .send(1, 4, &String::from("naïve 日本語"))
            .ok_or_die("send string");
        world
            .send(1, 5, &(0..1000u64).collect::<Vec<u64>>())
            .ok_or_die("send vec");
        world.send(1, 6, &Vec::<String>::new()).ok_or_die("send []");
    } else {
        for seq in 0..ROUNDS {
            let want = rich(seq);
            let got = world
                .recv::<Rich>(Source::Rank(0), Tag::Is(1))
                .ok_or_die("recv rich");
            assert_eq!(
                (got.source(), got.tag(), got.status().len > 0),
                (0, 1, true)
            );
            check_rich(&got, &want);
            let owned: Rich = got.deserialize().expect("deserialize");
            drop(got);
            assert_eq!(owned, want);
            world.send(0, 2, &reply(owned)).ok_or_die("send reply");
        }
        let want = [
            Shape::Empty,
            Shape::Point(-3, i64::MIN),
            Shape::Labeled {
                label: "grüße 🚀".into(),
                weights: vec![0.5, -1.25, f64::MAX],
            },
        ];
        for (i, shape) in want.iter().enumerate() {
            let got = world
                .recv::<Shape>(Source::Rank(0), Tag::Is(3))
                .ok_or_die("recv shape");
            common::check_shape(&got, shape, &format!("shape {i}"));
        }
        let s = world
            .recv::<String>(Source::Rank(0), Tag::Is(4))
            .ok_or_die("recv string");
        assert_eq!(s.as_str(), "naïve 日本語");
        drop(s);
        let v = world
            .recv::<Vec<u64>>(Source::Rank(0), Tag::Is(5))
            .ok_or_die("recv vec");
        assert!(v.iter().map(|x| x.to_native()).eq(0..1000));
        drop(v);
        let e = world
            .recv::<Vec<String>>(Source::Rank(0), Tag::Is(6))
            .ok_or_die("recv []");
        assert!(e.is_empty());
    }
}

/// Ranks 1.. each send `per` notes to rank 0 with tags 0..3; rank 0 takes them with
/// `Source::Any`/`Tag::Any`: each once, in order per (source, tag).
fn rank_p2p_any(world: &mut World, per: u32) {
    let (n, r) = (world.size(), world.rank());
    if r != 0 {
        let mut next = [0u32; 3];
        for i in 0..per {
            let tag = (i * 7 + r as u32) % 3;
            world
                .send(0, tag, &note(r, tag, next[tag as usize]))
                .ok_or_die("send note");
            next[tag as usize] += 1;
        }
        return;
    }
    let mut next: HashMap<(usize, u32), u32> = HashMap::new();
    let mut sources = vec![0u32; n];
    for _ in 0..per as usize * (n - 1) {
        let got = world
            .recv::<Note>(Source::Any, Tag::Any)
            .ok_or_die("recv any");
        let (src, tag) = (got.source(), got.tag());
        let seq = next.entry((src, tag)).or_insert(0);
        check_note(&got, src, tag, *seq);
        *seq += 1;
        sources[src] += 1;
    }
    assert_eq!(&sources[1..], vec![per; n - 1], "notes per source");
}

/// Rank 1 sends two tags interleaved and a third after them; rank 0 takes the last first,
/// then each tag in order, then a second round with `Tag::Any` in send order; and the
/// calls refuse what is not a rank or a user tag.
fn rank_p2p_tags(world: &mut World) {
    const K: u32 = 100;
    if world.rank() == 1 {
        for round in 0..2 {
            for seq in 0..K {
                world.send(0, 1, &note(1, 1, seq)).ok_or_die("send tag 1");
                world.send(0, 2, &note(1, 2, seq)).ok_or_die("send tag 2");
            }
            world.send(0, 3, &note(1, 3, round)).ok_or_die("send tag 3");
        }
        return;
    }
    // The message sent last, first: the 200 before it wait in arrival order.
    let last = world
        .recv::<Note>(Source::Rank(1), Tag::Is(3))
        .ok_or_die("recv tag 3");
    check_note(&last, 1, 3, 0);
    drop(last);
    for tag in [2, 1] {
        for seq in 0..K {
            let got = world
                .recv::<Note>(Source::Rank(1), Tag::Is(tag))
                .ok_or_die("recv by tag");
            check_note(&got, 1, tag, seq);
        }
    }
    // Second round, any tag: exactly the order they were sent in.
    for seq in 0..K {
        for tag in [1, 2] {
            let got = world
                .recv::<Note>(Source::Rank(1), Tag::Any)
                .ok_or_die("recv any tag");
            assert_eq!(got.tag(), tag);
            check_note(&got, 1, tag, seq);
        }
    }
    let got = world
        .recv::<Note>(Source::Any, Tag::Any)
        .ok_or_die("recv tag 3 again");
    check_note(&got, 1, 3, 1);
    drop(got);

    let reserved = Tag::MAX + 1;
    assert!(matches!(
        world.send(1, reserved, &0u32),
        Err(WorldError::ReservedTag(t)) if t == reserved
    ));
    assert!(matches!(
        world.recv::<u32>(Source::Rank(1), Tag::Is(reserved)),
        Err(WorldError::ReservedTag(_))
    ));
    assert!(matches!(
        world.send(2, 0, &0u32),
        Err(WorldError::NoSuchRank { rank: 2, size: 2 })
    ));
    assert!(matches!(
        world.recv::<u32>(Source::Rank(7), Tag::Any),
        Err(WorldError::NoSuchRank { rank: 7, size: 2 })
    ));
    assert!(matches!(
        world.broadcast(2, &mut [0u8]),
        Err(WorldError::NoSuchRank { .. })
    ));
}

/// 5 MiB: five times the ring.
const BIG: usize = 5 << 20;

fn big_data(seed: u32) -> Vec<u32> {
    (0..BIG as u32 / 4)
        .map(|i| i.wrapping_mul(2_654_435_761) ^ seed)
        .collect()
}

/// Rank 0 sends messages five times larger than the ring; rank 1 receives them with each
/// receive, and one while it waits, held, behind a later message.
fn rank_p2p_large(world: &mut World) {
    if world.rank() == 0 {
        world.send_slice(1, 1, &big_data(1)).ok_or_die("send 1");
        world.send_slice(1, 2, &big_data(2)).ok_or_die("send 2");
        world.send_slice(1, 3, &big_data(3)).ok_or_die("send 3");
        world.send(1, 4, &blob(4, BIG)).ok_or_die("send blob");
        world.send_slice(1, 5, &big_data(5)).ok_or_die("send 5");
        world.send(1, 6, &note(0, 6, 0)).ok_or_die("send note");
        return;
    }
    let (status, got) = world
        .recv_vec::<u32>(Source::Rank(0), Tag::Is(1))
        .ok_or_die("recv_vec");
    assert_eq!((status.source, status.tag, status.len), (0, 1, BIG));
    same(&got, &big_data(1), "recv_vec of 5 MiB");

    let mut exact = vec![0u32; BIG / 4];
    let status = world
        .recv_slice_into(Source::Rank(0), Tag::Is(2), &mut exact)
        .ok_or_die("recv_slice_into");
    assert_eq!(status.len, BIG);
    same(&exact, &big_data(2), "recv_slice_into of 5 MiB");

    let mut larger = vec![7u32; BIG / 4 + 1000];
    let status = world
        .recv_slice_into(Source::Any, Tag::Is(3), &mut larger)
        .ok_or_die("recv_slice_into a larger buffer");
    assert_eq!((status.source, status.len), (0, BIG));
    same(&larger[..BIG / 4], &big_data(3), "the message's part");
    assert!(
        larger[BIG / 4..].iter().all(|&x| x == 7),
        "the rest untouched"
    );

    let got = world
        .recv::<Blob>(Source::Rank(0), Tag::Is(4))
        .ok_or_die("recv blob");
    assert_eq!(got.id, 4);
    assert!(
        got.data.as_slice() == blob(4, BIG).data.as_slice(),
        "blob data"
    );
    drop(got);

    // The note first: the 5 MiB message before it is taken in whole and held.
    let got = world
        .recv::<Note>(Source::Rank(0), Tag::Is(6))
        .ok_or_die("recv note behind");
    check_note(&got, 0, 6, 0);
    drop(got);
    let (status, got) = world
        .recv_vec::<u32>(Source::Rank(0), Tag::Any)
        .ok_or_die("recv held");
    assert_eq!((status.tag, status.len), (5, BIG));
    same(&got, &big_data(5), "held 5 MiB message");
}

/// A buffer too small gets `Truncated`, and the message is consumed: a message in the ring,
/// and one held; a message that is not a whole number of elements gets `Misfit`.
fn rank_truncated(world: &mut World) {
    let data: Vec<u32> = (0..100).collect();
    if world.rank() == 0 {
        world.send_slice(1, 1, &data).ok_or_die("send 1");
        world.send_slice(1, 1, &[42u32]).ok_or_die("send 1 again");
        world.send_slice(1, 2, &data).ok_or_die("send 2");
        world.send_slice(1, 3, &[7u32]).ok_or_die("send 3");
        world.send_slice(1, 2, &[43u32]).ok_or_die("send 2 again");
        world.send_slice(1, 4, &[1u8; 7]).ok_or_die("send 7 bytes");
        world.send_slice(1, 4, &[44u32]).ok_or_die("send 4 again");
        return;
    }
    let mut small = [0u32; 10];
    match world.recv_slice_into(Source::Rank(0), Tag::Is(1), &mut small) {
        Err(WorldError::Truncated {
            rank: 0,
            tag: 1,
            len: 400,
            room: 40,
        }) => {}
        other => panic!("a 400-byte message into 40 bytes: {other:?}"),
    }
    let (_, next) = world
        .recv_vec::<u32>(Source::Rank(0), Tag::Is(1))
        .ok_or_die("recv after truncation");
    assert_eq!(next, [42], "the truncated message was consumed");

    // Tag 3 first, so that the tag-2 message is held when it is truncated.
    let (_, three) = world
        .recv_vec::<u32>(Source::Rank(0), Tag::Is(3))
        .ok_or_die("recv 3");
    assert_eq!(three, [7]);
    match world.recv_slice_into(Source::Rank(0), Tag::Is(2), &mut small) {
        Err(WorldError::Truncated {
            len: 400, room: 40, ..
        }) => {}
        other => panic!("a held 400-byte message into 40 bytes: {other:?}"),
    }
    let (_, next) = world
        .recv_vec::<u32>(Source::Rank(0), Tag::Is(2))
        .ok_or_die("recv 2 after truncation");
    assert_eq!(next, [43], "the held truncated message was consumed");

    match world.recv_vec::<u32>(Source::Rank(0), Tag::Is(4)) {
        Err(WorldError::Misfit {
            rank: 0,
            tag: 4,
            len: 7,
            size: 4,
        }) => {}
        other => panic!("7 bytes as u32: {other:?}"),
    }
    let (_, next) = world
        .recv_vec::<u32>(Source::Rank(0), Tag::Is(4))
        .ok_or_die("recv 4 after misfit");
    assert_eq!(next, [44]);
}

/// A message in fragments (larger than the ring) into a small buffer: `Truncated`, and the
/// next message arrives intact.
fn rank_truncated_fragments(world: &mut World) {
    if world.rank() == 0 {
        world.send_slice(1, 1, &big_data(9)).ok_or_die("send big");
        world.send_slice(1, 1, &[45u32]).ok_or_die("send small");
        return;
    }
    let mut small = [0u32; 1000];
    match world.recv_slice_into(Source::Rank(0), Tag::Is(1), &mut small) {
        Err(WorldError::Truncated {
            len, room: 4000, ..
        }) if len == BIG as u64 => {}
        other => panic!("a 5 MiB message into 4000 bytes: {other:?}"),
    }
    let (_, next) = world
        .recv_vec::<u32>(Source::Rank(0), Tag::Is(1))
        .ok_or_die("the message after a truncated one in fragments");
    assert_eq!(next, [45], "the truncated message was consumed");
}

/// Each rank sends to itself: typed, slices, non-blocking, and found by `Source::Any`.
fn rank_self_send(world: &mut World) {
    let me = world.rank();
    world.send(me, 1, &note(me, 1, 0)).ok_or_die("send self");
    world
        .send_slice(me, 2, &[1u64, 2, 3])
        .ok_or_die("send_slice self");
    let req = world.isend(me, 3, &note(me, 3, 5)).ok_or_die("isend self");
    let recv = world
        .irecv(Source::Rank(me), Tag::Is(3))
        .ok_or_die("irecv self");
    world
        .send(me, 4, &blob(4, BIG))
        .ok_or_die("send 5 MiB to self");

    let (_, v) = world
        .recv_vec::<u64>(Source::Rank(me), Tag::Is(2))
        .ok_or_die("recv_vec self");
    assert_eq!(v, [1, 2, 3]);
    let got = world
        .recv::<Note>(Source::Any, Tag::Any)
        .ok_or_die("recv any self");
    assert_eq!(got.source(), me);
    check_note(&got, me, 1, 0);
    drop(got);
    assert!(matches!(world.wait(req), Ok(Completion::Sent)));
    let msg = world
        .wait(recv)
        .ok_or_die("wait irecv self")
        .into_message()
        .expect("a message");
    assert_eq!(msg.source(), me);
    check_note(msg.access::<Note>().expect("a note"), me, 3, 5);
    let got = world
        .recv::<Blob>(Source::Rank(me), Tag::Is(4))
        .ok_or_die("recv 5 MiB from self");
    assert!(got.data.as_slice() == blob(4, BIG).data.as_slice());
}

// ---- non-blocking ----

/// Payload of the non-blocking messages: 2 to 10 KiB, so that the 200 of a sender are more
/// than its ring holds and most wait in its queue.
fn nb_payload(src: usize, seq: u32) -> Vec<u8> {
    let len = 2048 + (seq as usize * 997 + src * 131) % 8192;
    (0..len)
        .map(|i| (i as u32 ^ seq ^ (src as u32) << 4) as u8)
        .collect()
}

/// Ranks 1 and 2 each start `per` sends (tags 0..4) and wait for them all; rank 0 posts a
/// receive for each, in an order unlike the sending, and completes them out of order
/// (`wait` on the last, `test`, `wait_any`, `wait_all`). The j-th receive posted for
/// (source, tag) must get that source's j-th message with that tag.
fn rank_nb_many(world: &mut World, per: u32) {
    let r = world.rank();
    if r != 0 {
        let reqs: Vec<Request> = (0..per)
            .map(|seq| {
                world
                    .isend(
                        0,
                        seq % 4,
                        &Blob {
                            id: u64::from(seq),
                            data: nb_payload(r, seq),
                        },
                    )
                    .ok_or_die("isend")
            })
            .collect();
        let done = world.wait_all(reqs).ok_or_die("wait_all sends");
        assert_eq!(done.len(), per as usize);
        assert!(done.iter().all(|c| matches!(c, Completion::Sent)));
        // Then a second batch to receives from any source.
        let reqs: Vec<Request> = (0..50u32)
            .map(|seq| {
                world
                    .isend_slice(0, 9, &[r as u32, seq])
                    .ok_or_die("isend_slice")
            })
            .collect();
        world.wait_all(reqs).ok_or_die("wait_all slices");
        return;
    }
    // Post: tags from the last to the first, sources alternating, one of each at a time.
    let mut posted: Vec<(usize, u32, u32, Request)> = Vec::new();
    for j in 0..per / 4 {
        for tag in (0..4).rev() {
            for src in [2, 1] {
                let req = world
                    .irecv(Source::Rank(src), Tag::Is(tag))
                    .ok_or_die("irecv");
                posted.push((src, tag, tag + 4 * j, req));
            }
        }
    }
    let check = |src: usize, tag: u32, seq: u32, c: Completion| {
        let msg = c
            .into_message()
            .expect("a receive completes with a message");
        assert_eq!((msg.source(), msg.tag()), (src, tag));
        let got = msg.access::<Blob>().expect("a blob");
        assert_eq!(got.id, u64::from(seq), "from {src}, tag {tag}");
        assert!(got.data.as_slice() == nb_payload(src, seq).as_slice());
    };
    let total = posted.len();
    let mut completed = 0;
    // The last posted, first.
    let (src, tag, seq, req) = posted.pop().expect("posted");
    check(src, tag, seq, world.wait(req).ok_or_die("wait last"));
    completed += 1;
    // `test` until the first posted is done (bounded).
    let (src, tag, seq, req) = posted.remove(0);
    let until = Instant::now() + DEADLINE;
    while !world.test(&req).ok_or_die("test") {
        assert!(Instant::now() < until, "the first receive never completed");
        thread::yield_now();
    }
    check(src, tag, seq, world.wait(req).ok_or_die("wait tested"));
    completed += 1;
    // Half with wait_any, in whatever order they complete.
    let keep = posted.split_off(posted.len() / 2);
    let (mut meta, mut reqs): (Vec<(usize, u32, u32)>, Vec<Request>) = posted
        .into_iter()
        .map(|(s, t, q, req)| ((s, t, q), req))
        .unzip();
    while !reqs.is_empty() {
        let (i, c) = world.wait_any(&mut reqs).ok_or_die("wait_any");
        let (s, t, q) = meta.remove(i);
        check(s, t, q, c);
        completed += 1;
    }
    // The rest with wait_all: results in the order given.
    let (meta, reqs): (Vec<(usize, u32, u32)>, Vec<Request>) = keep
        .into_iter()
        .map(|(s, t, q, req)| ((s, t, q), req))
        .unzip();
    let done = world.wait_all(reqs).ok_or_die("wait_all receives");
    for ((s, t, q), c) in meta.into_iter().zip(done) {
        check(s, t, q, c);
        completed += 1;
    }
    assert_eq!(completed, total);

    // Receives from any source: filled in arrival order, so each source's numbers rise.
    let reqs: Vec<Request> = (0..100)
        .map(|_| world.irecv(Source::Any, Tag::Is(9)).ok_or_die("irecv any"))
        .collect();
    let mut next = [0u32; 3];
    for c in world.wait_all(reqs).ok_or_die("wait_all any") {
        let msg = c.into_message().expect("a message");
        let v = msg.to_vec::<u32>().expect("u32s");
        let src = msg.source();
        assert_eq!(v, [src as u32, next[src]], "from {src}");
        next[src] += 1;
    }
    assert_eq!(next, [0, 50, 50]);
    say("completed", completed);
}

/// `test` is false while nothing can complete the receive, true once the message is there.
fn rank_nb_test(world: &mut World) {
    if world.rank() == 1 {
        let (_, go) = world
            .recv_vec::<u8>(Source::Rank(0), Tag::Is(1))
            .ok_or_die("recv go");
        assert_eq!(go, [1]);
        world.send(0, 2, &note(1, 2, 0)).ok_or_die("send");
        return;
    }
    let req = world.irecv(Source::Rank(1), Tag::Is(2)).ok_or_die("irecv");
    for _ in 0..100 {
        // Rank 1 sends only after the go below.
        assert!(
            !world.test(&req).ok_or_die("test"),
            "completed before the send"
        );
    }
    assert!(matches!(
        world.wait_any(&mut Vec::new()),
        Err(WorldError::Mismatch(_))
    ));
    world.send_slice(1, 1, &[1u8]).ok_or_die("send go");
    let until = Instant::now() + DEADLINE;
    while !world.test(&req).ok_or_die("test") {
        assert!(Instant::now() < until, "the receive never completed");
        thread::yield_now();
    }
    let msg = world
        .wait(req)
        .ok_or_die("wait")
        .into_message()
        .expect("a message");
    check_note(msg.access::<Note>().expect("a note"), 1, 2, 0);
}

/// Every rank sends `mib` MiB to every other at once, first non-blocking (all sends and
/// receives started, then waited for together), then blocking (all sends, then the
/// receives): neither deadlocks.
fn rank_exchange(world: &mut World, mib: usize) {
    let (n, r) = (world.size(), world.rank());
    let data = |from: usize, to: usize| -> Vec<u64> {
        (0..(mib << 20) / 8)
            .map(|i| (i as u64) << 8 | (from * 16 + to) as u64)
            .collect()
    };
    let others: Vec<usize> = (0..n).filter(|&q| q != r).collect();
    let mut reqs = Vec::new();
    for &q in &others {
        reqs.push(world.isend_slice(q, 1, &data(r, q)).ok_or_die("isend"));
        reqs.push(world.irecv(Source::Rank(q), Tag::Is(1)).ok_or_die("irecv"));
    }
    let done = world.wait_all(reqs).ok_or_die("wait_all");
    for (k, &q) in others.iter().enumerate() {
        assert!(matches!(done[2 * k], Completion::Sent));
        let Completion::Received(msg) = &done[2 * k + 1] else {
            panic!("a receive completed as a send");
        };
        same(
            &msg.to_vec::<u64>().expect("u64s"),
            &data(q, r),
            format_args!("non-blocking from {q}"),
        );
    }
    for &q in &others {
        world
            .send_slice(q, 2, &data(r, q))
            .ok_or_die("blocking send");
    }
    for &q in &others {
        let (_, got) = world
            .recv_vec::<u64>(Source::Rank(q), Tag::Is(2))
            .ok_or_die("recv");
        same(&got, &data(q, r), format_args!("blocking from {q}"));
    }
}

// ---- oversubscription and idle cost ----

/// `rounds` rounds of small collectives (barrier, all-reduce, broadcast, reduce, all-gather,
/// scatter, gather of one element), each checked.
fn rank_small_many(world: &mut World, rounds: u64) {
    let (n, r) = (world.size(), world.rank());
    let nn = n as u64;
    for it in 0..rounds {
        let root = (it % nn) as usize;
        world.barrier().ok_or_die("barrier");
        let mut sum = [r as u64 + it];
        world.all_reduce(&mut sum, Op::Sum).ok_or_die("all_reduce");
        assert_eq!(sum[0], nn * it + nn * (nn - 1) / 2, "round {it}");
        let mut b = [if r == root { it * 7 + 1 } else { 0 }];
        world.broadcast(root, &mut b).ok_or_die("broadcast");
        assert_eq!(b[0], it * 7 + 1, "round {it}");
        let mut m = [((r as u64 + it) * 31) % nn];
        world.reduce(root, &mut m, Op::Max).ok_or_die("reduce");
        if r == root {
            assert_eq!(m[0], nn - 1, "round {it}: reduce Max");
        }
        let mut all = vec![0u64; n];
        world
            .all_gather(&[r as u64 ^ it], &mut all)
            .ok_or_die("all_gather");
        assert!(all.iter().enumerate().all(|(q, &x)| x == q as u64 ^ it));
        let send: Vec<u64> = (0..nn).map(|q| q * 1000 + it).collect();
        let mut one = [0u64];
        world.scatter(root, &send, &mut one).ok_or_die("scatter");
        assert_eq!(one[0], r as u64 * 1000 + it);
        let mut got = vec![0u64; if r == root { n } else { 0 }];
        world.gather(root, &one, &mut got).ok_or_die("gather");
        if r == root {
            assert_eq!(got, send);
        }
    }
    say("rounds", rounds);
}

/// CPU time (user + system) this process used so far: fields 14 and 15 of
/// `/proc/self/stat`, in clock ticks of 10 ms (`USER_HZ` is 100 on Linux).
fn cpu_used() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    let after = stat.rsplit_once(')').expect("(comm)").1;
    let fields: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse().expect("a number"))
        .collect();
    Duration::from_millis((fields[0] + fields[1]) * 10)
}

/// Rank 0 sleeps a second, then sends to every rank; they measure the CPU time their blocked
/// receive used.
fn rank_idle(world: &mut World) {
    let (n, r) = (world.size(), world.rank());
    if r == 0 {
        thread::sleep(Duration::from_secs(1));
        for q in 1..n {
            world.send_slice(q, 1, &[q as u8]).ok_or_die("send");
        }
        return;
    }
    let (cpu, start) = (cpu_used(), Instant::now());
    let (_, got) = world
        .recv_vec::<u8>(Source::Rank(0), Tag::Is(1))
        .ok_or_die("recv");
    let (cpu, wall) = (cpu_used() - cpu, start.elapsed());
    assert_eq!(got, [r as u8]);
    say("idle", format!("{} {}", cpu.as_millis(), wall.as_millis()));
}

// ---- failures ----

/// Surviving ranks (all but `dead`) exchange notes with each other, after a collective
/// failed; a receive from and a send larger than the ring to the dead rank fail.
fn survivors_carry_on(world: &mut World, dead: usize) {
    let (n, r) = (world.size(), world.rank());
    let others: Vec<usize> = (0..n).filter(|&q| q != r && q != dead).collect();
    for &q in &others {
        for seq in 0..10 {
            world
                .send(q, 77, &note(r, 77, seq))
                .ok_or_die("survivor send");
        }
    }
    for &q in &others {
        for seq in 0..10 {
            let got = world
                .recv::<Note>(Source::Rank(q), Tag::Is(77))
                .ok_or_die("survivor recv");
            check_note(&got, q, 77, seq);
        }
    }
    match world.recv::<Note>(Source::Rank(dead), Tag::Any) {
        Err(WorldError::PeerGone(d)) if d == dead => {}
        other => panic!("recv from the dead rank {dead}: {other:?}"),
    }
    match world.send(dead, 1, &blob(0, BIG)) {
        Err(WorldError::PeerGone(d)) if d == dead => {}
        other => panic!("a send larger than the ring to the dead rank {dead}: {other:?}"),
    }
    // Collectives stay failed.
    match world.barrier() {
        Err(e) if e.gone_rank() == Some(dead) => {}
        other => panic!("a barrier after rank {dead} died: {other:?}"),
    }
    // No barrier works any more: the parent tells the survivors when all are through.
    say("survived", r);
    wait_for_parent();
}

/// Loops on all-reduces until one fails; rank 2 kills itself at the start of round
/// `at`. Every other rank must fail in that round with `PeerGone(2)`.
fn rank_kill_self(world: &mut World, at: u64) {
    let (n, r) = (world.size(), world.rank());
    for it in 0.. {
        if r == 2 && it == at {
            kill_me();
        }
        let mut buf = vec![r as u64 + it; 1000];
        match world.all_reduce(&mut buf, Op::Sum) {
            Ok(()) => {
                let want = n as u64 * it + (n * (n - 1) / 2) as u64;
                assert!(buf.iter().all(|&x| x == want), "round {it}");
            }
            Err(e) => {
                assert_eq!(e.gone_rank(), Some(2), "round {it}: {e}");
                assert!(matches!(e, WorldError::PeerGone(2)));
                say("failed_at", it);
                break;
            }
        }
    }
    survivors_carry_on(world, 2);
}

/// Loops on all-reduces of 256 KiB (the ring algorithm, several records per step); rank 2
/// says `looping` after ten rounds, and the parent kills it while all are in the loop.
fn rank_kill_looping(world: &mut World) {
    let (n, r) = (world.size(), world.rank());
    let len = 32 << 10;
    for it in 0u64.. {
        if r == 2 && it == 10 {
            say("looping", it);
        }
        let mut buf: Vec<u64> = (0..len as u64).map(|i| i * 1000 + r as u64 + it).collect();
        match world.all_reduce(&mut buf, Op::Sum) {
            Ok(()) => {
                let base = n as u64 * it + (n * (n - 1) / 2) as u64;
                assert!(
                    buf.iter()
                        .enumerate()
                        .all(|(i, &x)| x == i as u64 * 1000 * n as u64 + base),
                    "round {it}"
                );
            }
            Err(e) => {
                assert!(matches!(e, WorldError::PeerGone(2)), "round {it}: {e}");
                say("failed_at", it);
                break;
            }
        }
    }
    survivors_carry_on(world, 2);
}

/// Rank 1 sends three notes and kills itself; once rank 0 sees it dead, it receives them,
/// then `PeerGone(1)` from `recv`, `irecv` and a send larger than the ring. `Source::Any`
/// reports the death once and then takes rank 2's note; when rank 2 has left too, it fails
/// rather than wait.
fn rank_recv_dead(world: &mut World) {
    match world.rank() {
        1 => {
            // Every rank is through `init` (whose barrier a death would fail on a rank still
            // in it) when rank 0 says go.
            let (_, go) = world
                .recv_vec::<u8>(Source::Rank(0), Tag::Is(5))
                .ok_or_die("recv go");
            assert_eq!(go, [5]);
            for seq in 0..3 {
                world.send(0, 1, &note(1, 1, seq)).ok_or_die("send");
            }
            kill_me();
        }
        2 => {
            world.send_slice(0, 6, &[6u8]).ok_or_die("send ready");
            let (_, go) = world
                .recv_vec::<u8>(Source::Rank(0), Tag::Is(2))
                .ok_or_die("recv go");
            assert_eq!(go, [2]);
            world.send(0, 3, &note(2, 3, 0)).ok_or_die("send");
            // Stay until rank 0 has the note.
            let (_, bye) = world
                .recv_vec::<u8>(Source::Rank(0), Tag::Is(4))
                .ok_or_die("recv bye");
            assert_eq!(bye, [4]);
        }
        _ => {
            let (_, ready) = world
                .recv_vec::<u8>(Source::Rank(2), Tag::Is(6))
                .ok_or_die("recv ready");
            assert_eq!(ready, [6]);
            world.send_slice(1, 5, &[5u8]).ok_or_die("send go");
            let until = Instant::now() + DEADLINE;
            while world.is_alive(1) {
                assert!(Instant::now() < until, "rank 1 still alive after SIGKILL");
                thread::sleep(Duration::from_millis(1));
            }
            for seq in 0..3 {
                let got = world
                    .recv::<Note>(Source::Rank(1), Tag::Is(1))
                    .ok_or_die("what rank 1 sent before it died");
                check_note(&got, 1, 1, seq);
            }
            match world.recv::<Note>(Source::Rank(1), Tag::Is(1)) {
                Err(WorldError::PeerGone(1)) => {}
                other => panic!("recv from the killed rank: {other:?}"),
            }
            let req = world.irecv(Source::Rank(1), Tag::Any).ok_or_die("irecv");
            match world.wait(req) {
                Err(WorldError::PeerGone(1)) => {}
                other => panic!("irecv from the killed rank: {other:?}"),
            }
            match world.send_slice(1, 1, &big_data(0)) {
                Err(WorldError::PeerGone(1)) => {}
                other => panic!("a send larger than the ring to the killed rank: {other:?}"),
            }
            // Any source: the death once (rank 2 has sent nothing yet), then rank 2's note.
            match world.recv::<Note>(Source::Any, Tag::Any) {
                Err(WorldError::PeerGone(1)) => {}
                other => panic!("recv from any source after rank 1 died: {other:?}"),
            }
            world.send_slice(2, 2, &[2u8]).ok_or_die("send go");
            let got = world
                .recv::<Note>(Source::Any, Tag::Any)
                .ok_or_die("recv from any source, rank 2 alive");
            assert_eq!(got.source(), 2);
            check_note(&got, 2, 3, 0);
            drop(got);
            // Rank 2 leaves: with nobody left, a receive from any source fails.
            world.send_slice(2, 4, &[4u8]).ok_or_die("send bye");
            match world.recv::<Note>(Source::Any, Tag::Any) {
                Err(WorldError::PeerGone(2)) => {}
                other => panic!("recv from any source after everyone left: {other:?}"),
            }
            match world.recv::<Note>(Source::Any, Tag::Any) {
                Err(e) if e.gone_rank().is_some() => {}
                other => panic!("recv from any source again: {other:?}"),
            }
        }
    }
}

/// Rank 0 waits in a receive (`source`: `rank` or `any`) for the note rank 1 sends when the
/// parent says so; rank 1 then leaves the world in order (`how` = `left`) or, after saying
/// `sent`, is killed (`killed`). The parent stops rank 0 meanwhile, so that it wakes only
/// when rank 1 is gone: it must get the note, then `PeerGone(1)`.
fn rank_sent_then_left(world: &mut World, how: &str, source: &str) {
    if world.rank() == 1 {
        wait_for_parent();
        world.send(0, 1, &note(1, 1, 0)).ok_or_die("send");
        if how == "killed" {
            say("sent", 1);
            loop {
                thread::sleep(Duration::from_secs(1));
            }
        }
        return;
    }
    let from = match source {
        "any" => Source::Any,
        _ => Source::Rank(1),
    };
    let what = if how == "left" { "left" } else { "was killed" };
    say("waiting", 0);
    match world.recv::<Note>(from, Tag::Is(1)) {
        Ok(got) => check_note(&got, 1, 1, 0),
        Err(e) => panic!("source {source}: the note rank 1 sent before it {what}: {e}"),
    }
    match world.recv::<Note>(from, Tag::Is(1)) {
        Err(WorldError::PeerGone(1)) => {}
        other => panic!("source {source}: a receive after rank 1 {what}: {other:?}"),
    }
}

/// Rank 1 kills itself; rank 0's receive from any source, posted with `irecv`, must fail
/// with `PeerGone(1)`, not wait forever. A guard reports a hang.
fn rank_irecv_any_dead(world: &mut World) {
    if world.rank() == 1 {
        // Rank 0 is through `init` (whose barrier a death would fail) when it says go.
        let (_, go) = world
            .recv_vec::<u8>(Source::Rank(0), Tag::Is(1))
            .ok_or_die("recv go");
        assert_eq!(go, [1]);
        kill_me();
    }
    world.send_slice(1, 1, &[1u8]).ok_or_die("send go");
    thread::spawn(|| {
        thread::sleep(Duration::from_secs(20));
        eprintln!("rank 0: still waiting for irecv(Any) 20 s after rank 1 was killed: a hang");
        std::process::exit(2);
    });
    let req = world.irecv(Source::Any, Tag::Any).ok_or_die("irecv");
    match world.wait(req) {
        Err(WorldError::PeerGone(1)) => {}
        other => panic!("irecv from any source, every other rank dead: {other:?}"),
    }
}

/// Rank 1 leaves the world (drops it, in order) without the barrier the others call; they
/// must hear that it is gone rather than wait for it forever. A guard reports a hang.
fn rank_left_early(world: &mut World) {
    if world.rank() == 1 {
        // `run_rank` says `done` after this; the world is dropped at the end of the role.
        return;
    }
    let r = world.rank();
    thread::spawn(move || {
        thread::sleep(Duration::from_secs(20));
        eprintln!("rank {r}: still in the barrier 20 s after rank 1 left the world: a hang");
        std::process::exit(2);
    });
    match world.barrier() {
        Err(WorldError::PeerGone(1)) => {}
        other => panic!("a barrier without rank 1, which left: {other:?}"),
    }
}

/// Joins a world of `size` with a short join timeout, of which some rank never starts.
fn rank_rendezvous(missing: usize) {
    // Long enough for the ranks that do start to start.
    let waited = Duration::from_secs(2);
    let e = match World::builder().join_timeout(waited).build() {
        Err(e) => e,
        Ok(world) => panic!("joined {world:?} without rank {missing}"),
    };
    let WorldError::Rendezvous {
        rank,
        ref job,
        waited: w,
    } = e
    else {
        panic!("joining without rank {missing}: {e:?}")
    };
    assert_eq!(rank, missing, "{e}");
    assert_eq!(w, waited);
    assert_eq!(job, &std::env::var("SHMESH_JOB").unwrap());
    let text = e.to_string();
    assert!(
        text.contains(&format!("rank {missing} did not join")),
        "{text}"
    );
    say("rendezvous", rank);
    say("done", std::env::var("SHMESH_RANK").expect("SHMESH_RANK"));
}

/// A rank launched by Open MPI's `mpirun`: joins, checks what it knows, all-reduces.
fn role_mpi() {
    let mut world = init();
    let (n, r) = (world.size(), world.rank());
    let mut sum = vec![r as u64 + 1; 100_000];
    world.all_reduce(&mut sum, Op::Sum).ok_or_die("all_reduce");
    let want = (n * (n + 1) / 2) as u64;
    assert!(sum.iter().all(|&x| x == want));
    let mut names = vec![0u8; 64 * n];
    let mut mine = [0u8; 64];
    mine[..world.job().len()].copy_from_slice(world.job().as_bytes());
    world.all_gather(&mine, &mut names).ok_or_die("all_gather");
    assert!(
        names.chunks(64).all(|c| c == mine),
        "every rank has the same job id"
    );
    say(
        "mpi",
        format!("{r} {n} {} {} {}", world.launcher(), world.job(), sum[0]),
    );
}

// ---- the tests ----

#[test]
fn collectives_match_a_sequential_reference_for_1_to_8_ranks() {
    let _watchdog = Watchdog::new("collectives", TEST_LIMIT);
    let mut counts = Vec::new();
    for n in 1..=8 {
        let lines = run_job("coll", n, "collectives", &[&(n as u64 * 1000 + 17)]);
        let checked: Vec<u64> = (0..n)
            .map(|r| values(&lines[&r], "checked")[0].parse().unwrap())
            .collect();
        assert!(checked.iter().all(|&c| c == checked[0]), "{checked:?}");
        counts.push(checked[0]);
    }
    // Every rank ran every collective: more roots with more ranks, so more checks.
    assert!(counts.windows(2).all(|w| w[0] < w[1]), "{counts:?}");
}

#[test]
fn large_collectives_of_16_mib_at_3_and_4_ranks() {
    let _watchdog = Watchdog::new("large", TEST_LIMIT);
    for n in [4, 3] {
        let lines = run_job("large", n, "large", &[&(n as u64)]);
        for r in 0..n {
            assert_eq!(values(&lines[&r], "checked"), ["2"]);
        }
    }
}

#[test]
fn p2p_rich_typed_messages_are_read_in_place_and_answered() {
    let _watchdog = Watchdog::new("p2p_rich", TEST_LIMIT);
    run_job("rich", 2, "p2p_rich", &[]);
}

#[test]
fn p2p_any_source_and_tag_gets_every_message_once_in_order_per_source_and_tag() {
    let _watchdog = Watchdog::new("p2p_any", TEST_LIMIT);
    run_job("any", 4, "p2p_any", &[&300]);
}

#[test]
fn p2p_tags_select_messages_and_the_others_wait_in_order() {
    let _watchdog = Watchdog::new("p2p_tags", TEST_LIMIT);
    run_job("tags", 2, "p2p_tags", &[]);
}

#[test]
fn p2p_larger_than_the_ring_in_every_receive() {
    let _watchdog = Watchdog::new("p2p_large", TEST_LIMIT);
    run_job("large-p2p", 2, "p2p_large", &[]);
}

#[test]
fn truncated_and_misfit_receives_consume_the_message() {
    let _watchdog = Watchdog::new("truncated", TEST_LIMIT);
    run_job("trunc", 2, "truncated", &[]);
}

#[test]
fn truncated_receive_of_a_message_in_fragments_consumes_it() {
    let _watchdog = Watchdog::new("truncated_fragments", TEST_LIMIT);
    run_job("trunc-frag", 2, "truncated_fragments", &[]);
}

#[test]
fn self_send_in_every_form() {
    let _watchdog = Watchdog::new("self_send", TEST_LIMIT);
    run_job("self", 1, "self_send", &[]);
    run_job("self", 3, "self_send", &[]);
}

#[test]
fn nonblocking_many_requests_complete_out_of_order_each_with_its_message() {
    let _watchdog = Watchdog::new("nb_many", TEST_LIMIT);
    let lines = run_job("nb", 3, "nb_many", &[&200]);
    assert_eq!(values(&lines[&0], "completed"), ["400"]);
}

#[test]
fn nonblocking_test_is_false_until_the_message_is_sent() {
    let _watchdog = Watchdog::new("nb_test", TEST_LIMIT);
    run_job("nbtest", 2, "nb_test", &[]);
}

#[test]
fn large_exchanges_in_both_directions_at_once_do_not_deadlock() {
    let _watchdog = Watchdog::new("exchange", TEST_LIMIT);
    run_job("xchg", 2, "exchange", &[&8]);
    run_job("xchg", 4, "exchange", &[&3]);
}

#[test]
fn oversubscribed_8_ranks_run_many_small_collectives() {
    let _watchdog = Watchdog::new("oversubscribed", TEST_LIMIT);
    let lines = run_job("oversub", 8, "small_many", &[&300]);
    for r in 0..8 {
        assert_eq!(values(&lines[&r], "rounds"), ["300"]);
    }
}

/// The receivers' CPU time while blocked, as a fraction of the wait: a receive that spins
/// uses about all of it (with 2 ranks), or a CPU's share (with 8 on a few CPUs); one that
/// sleeps on the futex a few per cent at most. The bounds are 5 to 10 times that.
#[test]
fn blocked_receive_sleeps_instead_of_spinning() {
    let _watchdog = Watchdog::new("idle", TEST_LIMIT);
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    for (n, fraction) in [(2, 4), (8, 10)] {
        let lines = run_job("idle", n, "idle", &[]);
        for r in 1..n {
            let v = values(&lines[&r], "idle");
            let (cpu, wall) = v[0].split_once(' ').expect("cpu wall");
            let (cpu, wall): (u64, u64) = (cpu.parse().unwrap(), wall.parse().unwrap());
            eprintln!("{n} ranks ({cpus} CPUs): rank {r} blocked {wall} ms, used {cpu} ms of CPU");
            assert!(
                cpu * fraction <= wall,
                "{n} ranks: rank {r} used {cpu} ms of CPU while blocked {wall} ms in recv: \
                 more than 1/{fraction} of the time, as if it spun"
            );
        }
    }
}

#[test]
fn rank_killing_itself_fails_every_collective_with_peer_gone_and_survivors_carry_on() {
    let _watchdog = Watchdog::new("kill_self", TEST_LIMIT);
    let job = Job::new("killself");
    let mut ranks = Ranks::start(&job, 4, "kill_self", &[&20]);
    for r in [0, 1, 3] {
        // Round 20 needs rank 2's part, which never comes. (Round 19 can fail too: a rank
        // still finishing it when rank 2, done with it, dies sees a death during a
        // collective.)
        let failed = ranks.rank(r).expect("failed_at");
        assert!(failed == "20" || failed == "19", "rank {r}: {failed:?}");
    }
    for r in [0, 1, 3] {
        assert_eq!(ranks.rank(r).expect("survived"), r.to_string());
    }
    ranks.finish(&[2]);
    job.assert_only_rings_of_dead(4, &[2]);
}

#[test]
fn rank_killed_mid_collective_by_the_parent_fails_it_with_peer_gone_everywhere() {
    let _watchdog = Watchdog::new("kill_looping", TEST_LIMIT);
    let job = Job::new("killloop");
    let mut ranks = Ranks::start(&job, 4, "kill_looping", &[]);
    ranks.rank(2).expect("looping");
    ranks.rank(2).kill();
    let failed: Vec<u64> = [0, 1, 3]
        .iter()
        .map(|&r| ranks.rank(r).expect("failed_at").parse().unwrap())
        .collect();
    for r in [0, 1, 3] {
        assert_eq!(ranks.rank(r).expect("survived"), r.to_string());
    }
    ranks.finish(&[2]);
    // The kill came after rank 2 started round 10. The survivors fail around the round rank
    // 2 died in: one still finishing the round before, one that got all of rank 2's part of
    // that round completes it and fails in the next.
    let (lo, hi) = (failed.iter().min().unwrap(), failed.iter().max().unwrap());
    assert!(*lo >= 9 && hi - lo <= 2, "rounds that failed: {failed:?}");
    job.assert_only_rings_of_dead(4, &[2]);
}

#[test]
fn receive_from_a_killed_rank_delivers_what_it_sent_then_peer_gone() {
    let _watchdog = Watchdog::new("recv_dead", TEST_LIMIT);
    let job = Job::new("recvdead");
    Ranks::start(&job, 3, "recv_dead", &[]).finish(&[1]);
    job.assert_only_rings_of_dead(3, &[1]);
}

#[test]
fn receive_gets_the_message_of_a_sender_that_left_while_it_waited() {
    let _watchdog = Watchdog::new("sent_then_left", TEST_LIMIT);
    for how in ["left", "killed"] {
        for source in ["rank", "any"] {
            let job = Job::new("sentleft");
            let mut ranks = Ranks::start(&job, 2, "sent_then_left", &[&how, &source]);
            ranks.rank(0).expect("waiting");
            // Let rank 0 settle into its wait (correct either way), then stop it there.
            thread::sleep(Duration::from_millis(200));
            common::sigstop(ranks.rank(0));
            ranks.rank(1).close_stdin();
            if how == "killed" {
                ranks.rank(1).expect("sent");
                ranks.rank(1).kill();
            } else {
                ranks.rank(1).wait_success();
            }
            common::sigcont(ranks.rank(0));
            if how == "killed" {
                ranks.finish(&[1]);
                job.assert_only_rings_of_dead(2, &[1]);
            } else {
                ranks.finish(&[]);
                job.assert_clean();
            }
        }
    }
}

#[test]
fn nonblocking_receives_from_ranks_that_sent_everything_and_left_get_every_message() {
    let _watchdog = Watchdog::new("nb_leave", TEST_LIMIT);
    for _ in 0..5 {
        let lines = run_job("nbleave", 3, "nb_many_then_leave", &[&200]);
        assert_eq!(values(&lines[&0], "completed"), ["400"]);
    }
}

#[test]
fn nonblocking_receive_from_any_source_fails_when_every_other_rank_is_dead() {
    let _watchdog = Watchdog::new("irecv_any_dead", TEST_LIMIT);
    let job = Job::new("irecvany");
    Ranks::start(&job, 2, "irecv_any_dead", &[]).finish(&[1]);
    job.assert_only_rings_of_dead(2, &[1]);
}

#[test]
fn rank_that_left_the_world_fails_the_collectives_that_need_it() {
    let _watchdog = Watchdog::new("left_early", TEST_LIMIT);
    run_job("left", 3, "left_early", &[]);
}

#[test]
fn rank_that_never_starts_is_named_by_the_rendezvous_error() {
    let _watchdog = Watchdog::new("rendezvous", TEST_LIMIT);
    let job = Job::new("rdv");
    let lines = Ranks::start_some(&job, 3, [0, 1], "rendezvous", &[&2]).finish(&[]);
    for r in [0, 1] {
        assert_eq!(values(&lines[&r], "rendezvous"), ["2"]);
    }
    job.assert_clean();
}

#[test]
fn open_mpi_mpirun_launches_ranks_that_meet_and_reduce() {
    let _watchdog = Watchdog::new("open_mpi", TEST_LIMIT);
    let required = std::env::var("SHMESH_REQUIRE_MPI").is_ok_and(|v| v == "1");
    match Command::new("mpirun").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        other => {
            assert!(
                !required,
                "SHMESH_REQUIRE_MPI=1 but `mpirun --version` does not run: {other:?}"
            );
            eprintln!(
                "note: skipping the Open MPI test: no working `mpirun` ({other:?}); set \
                 SHMESH_REQUIRE_MPI=1 to make this a failure"
            );
            return;
        }
    }
    let prefix = [
        "--allow-run-as-root",
        "--oversubscribe",
        "-n",
        "3",
        "-x",
        CHILD_ENV,
    ];
    let mut cmd = child_command(Some(("mpirun", &prefix[..])), &this_exe(), "mpi", &[]);
    for var in [
        "SHMESH_JOB",
        "SHMESH_RANK",
        "SHMESH_SIZE",
        "SHMESH_JOIN_TIMEOUT",
    ] {
        cmd.env_remove(var);
    }
    let mut mpirun = Proc::spawn_cmd("mpirun -n 3", cmd);
    let status = mpirun.wait();
    let lines = mpirun.remaining_lines();
    if !status.success() {
        mpirun.fail(format!("mpirun failed: {status}"));
    }
    let mut reports = values(&lines, "mpi");
    reports.sort();
    assert_eq!(reports.len(), 3, "{lines:?}");
    let job = reports[0].split(' ').nth(3).expect("a job id").to_owned();
    for (r, report) in reports.iter().enumerate() {
        assert_eq!(*report, format!("{r} 3 openmpi {job} 6"), "{lines:?}");
    }
    assert!(job.starts_with("ompi-"), "{job}");
    let left = Job(job);
    left.assert_clean();
}
