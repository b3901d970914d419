//! A task farm: rank 0 hands out tasks, the other ranks (the workers) do them and send typed
//! results back, and rank 0 gives the next task to whichever worker answered first
//! (`Source::Any`). The work is counting the primes below a limit, a chunk of numbers per
//! task; rank 0 checks every result and the total against a sieve of its own.
//!
//! When a worker dies, rank 0's receive from any source says so (`PeerGone`) and rank 0 hands
//! the task that worker held to another one; the farm finishes with the workers left, or with
//! none (rank 0 then does the rest itself).
//!
//! Run with the launcher (`shmesh run` starts the ranks and prefixes their output):
//!
//! ```text
//! cargo build --release --bin shmesh --example task_farm
//! target/release/shmesh run -n 4 -- target/release/examples/task_farm
//! target/release/shmesh run -n 4 -- target/release/examples/task_farm --kill-worker 2
//! ```
//!
//! Options: `--limit N` (count the primes below N, 2000000 by default), `--chunk N` (numbers
//! per task, 20000), `--kill-worker R` (worker R kills itself with SIGKILL when it gets its
//! third task, to show the farm carrying on). Started alone, it is a world of one rank, which
//! does all the tasks itself.

use std::collections::VecDeque;
use std::error::Error;

use rkyv::{Archive, Deserialize, Serialize};
use shmesh::world::{Source, Tag, World, WorldError};

/// The tag of orders (rank 0 to a worker).
const ORDER: u32 = 1;
/// The tag of results (a worker to rank 0).
const DONE: u32 = 2;

/// A task: count the primes in `lo..hi`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy)]
struct Task {
    id: u32,
    lo: u64,
    hi: u64,
}

/// What rank 0 tells a worker.
#[derive(Archive, Serialize, Deserialize, Debug)]
enum Order {
    /// Do this task and send the result.
    Work(Task),
    /// No more tasks: leave.
    Stop,
}

/// A worker's result.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy)]
struct Done {
    id: u32,
    /// How many primes the task's range holds.
    primes: u64,
    /// The largest of them, if any.
    largest: Option<u64>,
}

struct Options {
    limit: u64,
    chunk: u64,
    kill_worker: Option<usize>,
}

fn options() -> Result<Options, Box<dyn Error>> {
    let mut o = Options {
        limit: 2_000_000,
        chunk: 20_000,
        kill_worker: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || -> Result<u64, Box<dyn Error>> {
            let v = args.next().ok_or(format!("{arg} needs a value"))?;
            Ok(v.parse().map_err(|_| format!("{arg} {v}: not a number"))?)
        };
        match arg.as_str() {
            "--limit" => o.limit = value()?,
            "--chunk" => o.chunk = value()?.max(1),
            "--kill-worker" => o.kill_worker = Some(value()? as usize),
            other => {
                return Err(format!(
                    "unknown argument {other}; use --limit N, --chunk N, --kill-worker R"
                )
                .into())
            }
        }
    }
    Ok(o)
}

fn is_prime(n: u64) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n % 2 == 0 || n % 3 == 0 {
        return false;
    }
    let mut d = 5;
    while d * d <= n {
        if n % d == 0 || n % (d + 2) == 0 {
            return false;
        }
        d += 6;
    }
    true
}

/// The work of a task, by trial division.
fn work(task: Task) -> Done {
    let mut done = Done {
        id: task.id,
        primes: 0,
        largest: None,
    };
    for n in (task.lo..task.hi).filter(|&n| is_prime(n)) {
        done.primes += 1;
        done.largest = Some(n);
    }
    done
}

fn main() -> Result<(), Box<dyn Error>> {
    let opts = options()?;
    let mut world = World::init()?;
    if world.rank() == 0 {
        farm(&mut world, &opts)
    } else {
        worker(&mut world, &opts)
    }
}

/// A worker: does each task it is given until told to stop.
fn worker(world: &mut World, opts: &Options) -> Result<(), Box<dyn Error>> {
    let me = world.rank();
    let mut tasks = 0;
    loop {
        let order = world.recv::<Order>(Source::Rank(0), Tag::Is(ORDER))?;
        let task = match &*order {
            ArchivedOrder::Stop => break,
            ArchivedOrder::Work(t) => Task {
                id: t.id.to_native(),
                lo: t.lo.to_native(),
                hi: t.hi.to_native(),
            },
        };
        drop(order);
        tasks += 1;
        if opts.kill_worker == Some(me) && tasks == 3 {
            println!(
                "worker {me}: got task {}, and dies now (--kill-worker)",
                task.id
            );
            nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL)?;
        }
        world.send(0, DONE, &work(task))?;
    }
    println!("worker {me}: {tasks} tasks, stopped");
    Ok(())
}

/// What rank 0 knows of the farm.
struct Farm {
    queue: VecDeque<Task>,
    results: Vec<Option<Done>>,
    /// The task each worker holds.
    busy: Vec<Option<Task>>,
    alive: Vec<bool>,
    /// Live workers without a task (the queue was empty when they answered).
    idle: Vec<usize>,
    /// Tasks done, by rank.
    count: Vec<u32>,
}

impl Farm {
    fn outstanding(&self) -> bool {
        self.busy.iter().any(Option::is_some)
    }

    /// Gives `worker` the next task, or lists it as idle. A worker that is gone is marked so,
    /// and its task goes back to the queue.
    fn assign(&mut self, world: &mut World, worker: usize) -> Result<(), WorldError> {
        let Some(task) = self.queue.pop_front() else {
            self.idle.push(worker);
            return Ok(());
        };
        match world.send(worker, ORDER, &Order::Work(task)) {
            Ok(()) => {
                self.busy[worker] = Some(task);
                Ok(())
            }
            Err(WorldError::PeerGone(w)) => {
                self.queue.push_front(task);
                self.gone(world, w)
            }
            Err(e) => Err(e),
        }
    }

    /// `worker` died: its task, if any, goes to an idle worker or back to the queue.
    fn gone(&mut self, world: &mut World, worker: usize) -> Result<(), WorldError> {
        if !self.alive[worker] {
            return Ok(());
        }
        self.alive[worker] = false;
        self.idle.retain(|&w| w != worker);
        let Some(task) = self.busy[worker].take() else {
            println!("farm: worker {worker} is gone (it held no task)");
            return Ok(());
        };
        self.queue.push_front(task);
        match self.idle.pop() {
            Some(other) => {
                println!(
                    "farm: worker {worker} is gone with task {} ({}..{}): handed to worker {other}",
                    task.id, task.lo, task.hi
                );
                self.assign(world, other)
            }
            None => {
                println!(
                    "farm: worker {worker} is gone with task {} ({}..{}): back in the queue, \
                     for the next worker that answers",
                    task.id, task.lo, task.hi
                );
                Ok(())
            }
        }
    }

    fn record(&mut self, rank: usize, done: Done) -> Result<(), Box<dyn Error>> {
        let slot = self.results.get_mut(done.id as usize).ok_or(format!(
            "rank {rank} answered task {}, which does not exist",
            done.id
        ))?;
        // A task given again after its worker died may come back twice: the first counts.
        if slot.is_none() {
            *slot = Some(done);
            self.count[rank] += 1;
        }
        Ok(())
    }
}

/// Rank 0: hands out the tasks, collects and checks the results, stops the workers.
fn farm(world: &mut World, opts: &Options) -> Result<(), Box<dyn Error>> {
    let size = world.size();
    if let Some(w) = opts.kill_worker {
        if w == 0 || w >= size {
            return Err(format!("--kill-worker {w}: the workers are ranks 1..{size}").into());
        }
    }
    let tasks: Vec<Task> = (0..opts.limit.div_ceil(opts.chunk))
        .map(|i| Task {
            id: i as u32,
            lo: i * opts.chunk,
            hi: ((i + 1) * opts.chunk).min(opts.limit),
        })
        .collect();
    println!(
        "farm: {} tasks of {} numbers below {} for {} workers",
        tasks.len(),
        opts.chunk,
        opts.limit,
        size - 1
    );
    let mut farm = Farm {
        queue: tasks.iter().copied().collect(),
        results: vec![None; tasks.len()],
        busy: vec![None; size],
        alive: (0..size).map(|r| r != 0).collect(),
        idle: Vec::new(),
        count: vec![0; size],
    };
    for w in 1..size {
        farm.assign(world, w)?;
    }
    while farm.results.iter().any(Option::is_none) {
        if !farm.outstanding() {
            // No worker left holds a task: rank 0 does the next one itself.
            let task = farm
                .queue
                .pop_front()
                .ok_or("a task is neither done nor queued")?;
            farm.record(0, work(task))?;
            continue;
        }
        // The result (copied out of the ring), or why there is none.
        let answer = match world.recv::<Done>(Source::Any, Tag::Is(DONE)) {
            Ok(msg) => Ok((msg.source(), msg.deserialize()?)),
            Err(e) => Err(e),
        };
        match answer {
            Ok((rank, done)) => {
                farm.record(rank, done)?;
                if farm.alive[rank] {
                    farm.busy[rank] = None;
                    farm.assign(world, rank)?;
                }
            }
            Err(WorldError::PeerGone(w)) => farm.gone(world, w)?,
            Err(e) => return Err(e.into()),
        }
    }
    for w in 1..size {
        if farm.alive[w] {
            match world.send(w, ORDER, &Order::Stop) {
                Ok(()) | Err(WorldError::PeerGone(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    for w in 1..size {
        let fate = if farm.alive[w] { "" } else { ", then died" };
        println!("farm: worker {w} did {} tasks{fate}", farm.count[w]);
    }
    if farm.count[0] > 0 {
        println!("farm: rank 0 did {} tasks itself", farm.count[0]);
    }
    check(&tasks, &farm.results, opts.limit)
}

/// Checks every result and the total against a sieve of Eratosthenes.
fn check(tasks: &[Task], results: &[Option<Done>], limit: u64) -> Result<(), Box<dyn Error>> {
    let mut composite = vec![false; limit as usize];
    let mut below = vec![0u64; limit as usize + 1];
    let mut largest = None;
    for n in 0..limit as usize {
        let prime = n >= 2 && !composite[n];
        if prime {
            largest = Some(n as u64);
            for m in (n * n..limit as usize).step_by(n) {
                composite[m] = true;
            }
        }
        below[n + 1] = below[n] + u64::from(prime);
    }
    let mut total = 0;
    for (task, done) in tasks.iter().zip(results) {
        let done = done.ok_or(format!("task {} has no result", task.id))?;
        let want = below[task.hi as usize] - below[task.lo as usize];
        if done.primes != want {
            return Err(format!(
                "task {} ({}..{}): {} primes, the sieve says {want}",
                task.id, task.lo, task.hi, done.primes
            )
            .into());
        }
        total += done.primes;
    }
    let top = results.iter().flatten().filter_map(|d| d.largest).max();
    if total != below[limit as usize] || top != largest {
        return Err(format!(
            "{total} primes below {limit}, the largest {top:?}; the sieve says {}, {largest:?}",
            below[limit as usize]
        )
        .into());
    }
    println!(
        "farm: {total} primes below {limit}, the largest {}: matches the sieve",
        largest.map_or("none".to_string(), |p| p.to_string())
    );
    Ok(())
}
