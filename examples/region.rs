//! Shared state in whole versions: one writer updates a fleet's state, two reader processes
//! follow it, and each reader tells the writer how far it got through a region of its own.
//!
//! ```text
//! cargo run --release --example region
//! ```
//!
//! The first process creates the typed region `region-<pid>` holding a `Fleet` (a rich type:
//! strings, a vector of structs) and starts two copies of itself as readers. Each reader
//! creates a small region of its own, `region-<pid>.ack.<who>`, where it publishes the last
//! version it saw. The writer waits until both readers are there, then publishes
//! [`ROUNDS`] versions, each adding the round number to one vehicle's kilometres and to the
//! total. Readers follow with `next()`: they may skip versions (a region holds the latest
//! state, not a queue), but every snapshot they get must be one whole version: the total equals
//! the sum of the vehicles, and the round matches the version. Finally the writer shows what
//! change tracking recorded, and waits until both readers acknowledged the last version.

use std::error::Error;
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use shmesh::region::TypedRegion;

/// The state the writer publishes.
#[derive(rkyv::Archive, rkyv::Serialize)]
struct Fleet {
    round: u64,
    vehicles: Vec<Vehicle>,
    total_km: u64,
    note: String,
    done: bool,
}

#[derive(rkyv::Archive, rkyv::Serialize)]
struct Vehicle {
    id: u32,
    name: String,
    km: u64,
}

const ROUNDS: u64 = 2000;
const VEHICLES: u32 = 48;
const READERS: [&str; 2] = ["A", "B"];
const PATIENCE: Duration = Duration::from_secs(20);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [] => writer(),
        [flag, region, who] if flag == "--reader" => reader(region, who),
        _ => Err("usage: region (the readers are started by the program itself)".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("region: {e}");
            ExitCode::FAILURE
        }
    }
}

fn writer() -> Result<(), Box<dyn Error>> {
    let name = format!("region-{}", std::process::id());
    let mut fleet = Fleet {
        round: 0,
        vehicles: (0..VEHICLES)
            .map(|id| Vehicle {
                id,
                name: format!("truck-{id:02}"),
                km: 0,
            })
            .collect(),
        total_km: 0,
        note: "fleet of the north depot".into(),
        done: false,
    };
    // 256-byte chunks: a round changes one vehicle, so a mirror would ship a chunk or two.
    let region = TypedRegion::<Fleet>::builder(&name)
        .chunk_size(256)
        .create(&fleet)?;
    let mut writer = region.writer()?;
    let mut children: Vec<Child> = Vec::new();
    for who in READERS {
        children.push(
            Command::new(std::env::current_exe()?)
                .args(["--reader", &name, who])
                .spawn()
                .map_err(|e| format!("cannot start a reader: {e}"))?,
        );
    }
    let result = publish(&name, &region, &mut writer, &mut fleet);
    if result.is_err() {
        for child in &mut children {
            let _ = child.kill();
        }
    }
    for mut child in children {
        let status = child.wait()?;
        if !status.success() {
            return Err(format!("a reader failed ({status})").into());
        }
    }
    result
}

fn publish(
    name: &str,
    region: &TypedRegion<Fleet>,
    writer: &mut shmesh::region::TypedWriter<Fleet>,
    fleet: &mut Fleet,
) -> Result<(), Box<dyn Error>> {
    // The readers' acknowledgement regions: they exist once the readers are up.
    let deadline = Instant::now() + PATIENCE;
    let mut acks = Vec::new();
    for who in READERS {
        let ack = loop {
            match TypedRegion::<u64>::open(format!("{name}.ack.{who}")) {
                Ok(ack) => break ack,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(format!("reader {who} did not come up: {e}").into()),
            }
        };
        acks.push((who, ack.reader()));
    }
    let start = Instant::now();
    let first = writer.version() + 1;
    for round in 1..=ROUNDS {
        let vehicle = &mut fleet.vehicles[(round % u64::from(VEHICLES)) as usize];
        vehicle.km += round;
        fleet.total_km += round;
        fleet.round = round;
        fleet.done = round == ROUNDS;
        writer.publish(fleet)?;
        // A state that changes every 100 µs or so: readers keep up with some, skip others.
        let pause = Instant::now() + Duration::from_micros(100);
        while Instant::now() < pause {
            std::hint::spin_loop();
        }
    }
    let last = writer.version();
    println!(
        "writer: published versions {first}..={last} in {:.1?}",
        start.elapsed()
    );
    let changes = region.bytes().reader().changes_since(last - 1)?;
    println!(
        "writer: the last version changed {} of {} chunks",
        changes.chunks.len(),
        region.bytes().shape().chunks
    );
    // The readers may be gone by now: their regions stay mapped here while the handles live.
    for (who, ack) in &mut acks {
        let mut seen = ack.read()?.to_native();
        while seen < last {
            seen = ack.next(Some(PATIENCE))?.to_native();
        }
        println!("writer: reader {who} acknowledged version {seen}");
    }
    Ok(())
}

fn reader(name: &str, who: &str) -> Result<(), Box<dyn Error>> {
    let fleet = TypedRegion::<Fleet>::open(name)?;
    let ack_region = TypedRegion::create(format!("{name}.ack.{who}"), &0u64)?;
    let mut ack = ack_region.writer()?;
    let mut reader = fleet.reader();
    let (mut followed, mut previous) = (0u64, 0u64);
    loop {
        let snapshot = reader.next(Some(PATIENCE))?;
        let version = snapshot.version();
        let sum: u64 = snapshot.vehicles.iter().map(|v| v.km.to_native()).sum();
        if sum != snapshot.total_km.to_native() || snapshot.round.to_native() + 1 != version {
            return Err(format!(
                "reader {who}: version {version} is torn: total {} but vehicles sum to {sum}, \
                 round {}",
                snapshot.total_km, snapshot.round
            )
            .into());
        }
        if version <= previous {
            return Err(format!("reader {who}: version {version} after {previous}").into());
        }
        previous = version;
        followed += 1;
        let done = snapshot.done;
        ack.publish(&version)?;
        if done {
            break;
        }
    }
    println!(
        "reader {who}: followed {followed} versions up to {previous}, every snapshot consistent"
    );
    // The writer has the acknowledgement region open: it outlives this process's handle.
    Ok(())
}
