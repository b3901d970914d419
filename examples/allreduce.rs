//! All-reduce across ranks: every rank contributes a vector, every rank gets the element-wise
//! sum, checked against the formula, then rank 0 times small and large all-reduces.
//!
//! Run with the launcher (`shmesh run` starts the ranks and prefixes their output):
//!
//! ```text
//! cargo build --release --bin shmesh --example allreduce
//! target/release/shmesh run -n 4 -- target/release/examples/allreduce
//! ```
//!
//! Started alone, it is a world of one rank.

use std::error::Error;
use std::time::Instant;

use shmesh::world::{Op, World};

fn main() -> Result<(), Box<dyn Error>> {
    let mut world = World::init()?;
    let (rank, size) = (world.rank(), world.size());

    // Element i of rank r is r * 1000 + i: the sum over ranks is known in closed form.
    for len in [1usize, 1000, 300_000] {
        let mut data: Vec<u64> = (0..len as u64).map(|i| rank as u64 * 1000 + i).collect();
        world.all_reduce(&mut data, Op::Sum)?;
        let ranks = size as u64;
        let base = 1000 * ranks * (ranks - 1) / 2;
        if let Some((i, got)) = data
            .iter()
            .enumerate()
            .find(|&(i, &got)| got != base + ranks * i as u64)
        {
            return Err(format!(
                "rank {rank}: element {i} is {got}, not {}",
                base + ranks * i as u64
            )
            .into());
        }
        let mut biggest = [rank as i64];
        world.all_reduce(&mut biggest, Op::Max)?;
        assert_eq!(biggest[0], size as i64 - 1);
        if rank == 0 {
            println!("all_reduce of {len} u64 over {size} ranks: correct");
        }
    }

    for (bytes, rounds) in [(8usize, 10_000u32), (1 << 20, 200)] {
        let mut data = vec![1.0f64; bytes / 8];
        world.barrier()?;
        let start = Instant::now();
        for _ in 0..rounds {
            world.all_reduce(&mut data, Op::Sum)?;
            data.iter_mut().for_each(|x| *x = 1.0);
        }
        let per = start.elapsed() / rounds;
        if rank == 0 {
            println!(
                "all_reduce of {bytes} bytes over {size} ranks: {per:?} each ({rounds} rounds)"
            );
        }
    }
    world.barrier()?;
    Ok(())
}
