//! One publisher, two subscribers, three processes: publish/subscribe over a broadcast ring.
//!
//! ```text
//! cargo run --release --example pubsub
//! ```
//!
//! The first process creates the topic `pubsub-<pid>` (a broadcast ring, `Block` policy: the
//! publisher waits for the slowest subscriber, so nobody misses a reading) and starts two copies
//! of itself as subscribers. Each subscriber reads every reading in place in shared memory,
//! checks the sequence numbers and prints a summary; the publisher waits until both are
//! subscribed, publishes, and says goodbye by dropping its end (the subscribers then see
//! `Disconnected` once they have read everything).

use std::error::Error;
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use shmesh::channel::RecvError;
use shmesh::topic::Topic;

/// One reading of a sensor: a rich type, read in place by every subscriber.
#[derive(rkyv::Archive, rkyv::Serialize)]
struct Reading {
    seq: u64,
    sensor: String,
    celsius: f32,
    tags: Vec<String>,
}

const READINGS: u64 = 100_000;
const SUBSCRIBERS: usize = 2;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [] => publisher(),
        [flag, topic, who] if flag == "--subscriber" => subscriber(topic, who),
        _ => Err("usage: pubsub (the subscribers are started by the program itself)".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pubsub: {e}");
            ExitCode::FAILURE
        }
    }
}

fn publisher() -> Result<(), Box<dyn Error>> {
    let topic = Topic::<Reading>::builder(format!("pubsub-{}", std::process::id()))
        .capacity(1 << 20)
        .create()?;
    let mut publisher = topic.publisher()?;
    let mut children: Vec<Child> = Vec::new();
    for who in ["A", "B"].iter().take(SUBSCRIBERS) {
        children.push(
            Command::new(std::env::current_exe()?)
                .args(["--subscriber", topic.name(), who])
                .spawn()
                .map_err(|e| format!("cannot start a subscriber: {e}"))?,
        );
    }
    let result = publish(&topic, &mut publisher);
    if result.is_err() {
        for child in &mut children {
            let _ = child.kill();
        }
    }
    drop(publisher); // the subscribers see Disconnected after the last reading
    for mut child in children {
        let status = child.wait()?;
        if !status.success() {
            return Err(format!("a subscriber failed ({status})").into());
        }
    }
    result
}

fn publish(
    topic: &Topic<Reading>,
    publisher: &mut shmesh::Publisher<Reading>,
) -> Result<(), Box<dyn Error>> {
    // Wait until both subscribers are in: a subscriber receives what is published after it
    // joined (or the history it asks for).
    let deadline = Instant::now() + Duration::from_secs(10);
    while topic.subscribers() < SUBSCRIBERS {
        if Instant::now() > deadline {
            return Err("the subscribers did not subscribe within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let start = Instant::now();
    let mut reading = Reading {
        seq: 0,
        sensor: "greenhouse-3".into(),
        celsius: 21.5,
        tags: vec!["north".into(), "calibrated".into()],
    };
    for seq in 0..READINGS {
        reading.seq = seq;
        reading.celsius = 20.0 + (seq % 50) as f32 / 10.0;
        publisher.publish(&reading)?;
    }
    let elapsed = start.elapsed();
    println!(
        "publisher: {READINGS} readings to {SUBSCRIBERS} subscribers in {elapsed:.1?} ({:.0} readings/s)",
        READINGS as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

fn subscriber(topic: &str, who: &str) -> Result<(), Box<dyn Error>> {
    let mut sub = Topic::<Reading>::open(topic)?.subscriber()?;
    let (mut expected, mut sum) = (0u64, 0f64);
    loop {
        let reading = match sub.recv_timeout(Duration::from_secs(10)) {
            Ok(reading) => reading,
            Err(RecvError::Disconnected) => break,
            Err(e) => return Err(e.into()),
        };
        // In place, in shared memory: no copy, no deserialization.
        if reading.seq != expected {
            return Err(format!(
                "subscriber {who}: reading {} after {}",
                reading.seq, expected
            )
            .into());
        }
        if reading.sensor != "greenhouse-3" || reading.tags.len() != 2 {
            return Err(format!("subscriber {who}: reading {expected} is damaged").into());
        }
        sum += f64::from(reading.celsius.to_native());
        expected += 1;
    }
    if expected != READINGS {
        return Err(format!("subscriber {who}: {expected} of {READINGS} readings").into());
    }
    println!(
        "subscriber {who}: {expected} readings in order, mean {:.2} °C",
        sum / expected as f64
    );
    Ok(())
}
