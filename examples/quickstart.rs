//! Two processes exchange typed messages over shmesh channels.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```
//!
//! The first process creates two channels, one for orders and one for receipts, and starts a
//! copy of itself as the shop. It sends an order; the shop reads it in place in shared memory
//! (no copy, no deserialization), prints it and answers with a receipt. Then the first process
//! times 1000 round trips. The channels disappear from `/dev/shm` when the first process is
//! done with them.

use std::error::Error;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use shmesh::channel::RecvError;
use shmesh::{Channel, Receiver, Sender};

/// What the customer sends: any type that derives `Archive` and `Serialize` travels.
#[derive(rkyv::Archive, rkyv::Serialize)]
struct Order {
    customer: String,
    items: Vec<u32>,
    note: Option<String>,
    delivery: Delivery,
}

#[derive(rkyv::Archive, rkyv::Serialize)]
enum Delivery {
    Pickup,
    Courier { days: u8 },
}

/// What the shop answers.
#[derive(rkyv::Archive, rkyv::Serialize)]
struct Receipt {
    order: u64,
    total: u32,
    message: String,
}

const ROUND_TRIPS: usize = 1000;
/// How long to wait for a receipt before giving up.
const PATIENCE: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [] => customer(),
        [flag, orders, receipts] if flag == "--shop" => shop(orders, receipts),
        _ => Err("usage: quickstart (the shop is started by the program itself)".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The first process: creates the channels, starts the shop, sends orders, times them.
fn customer() -> Result<(), Box<dyn Error>> {
    // Channel names are per run: two runs at once do not meet.
    let pid = std::process::id();
    let orders = Channel::<Order>::create(format!("quickstart-{pid}-orders"))?;
    let receipts = Channel::<Receipt>::create(format!("quickstart-{pid}-receipts"))?;
    let mut tx = orders.sender()?;
    let mut rx = receipts.receiver()?;

    let mut shop = Command::new(std::env::current_exe()?)
        .args(["--shop", orders.name(), receipts.name()])
        .spawn()
        .map_err(|e| format!("cannot start the shop process: {e}"))?;
    let result = exchange(&mut tx, &mut rx);
    if result.is_err() {
        let _ = shop.kill();
    }
    // Dropping the sender tells the shop there are no more orders.
    drop(tx);
    let status = shop.wait()?;
    result?;
    if !status.success() {
        return Err(format!("the shop process failed ({status})").into());
    }
    Ok(())
}

/// Sends an order and shows the receipt, then times round trips.
fn exchange(tx: &mut Sender<Order>, rx: &mut Receiver<Receipt>) -> Result<(), Box<dyn Error>> {
    let order = |delivery| Order {
        customer: "Ada".into(),
        items: vec![3, 14, 15],
        note: Some("ring the bell twice".into()),
        delivery,
    };
    tx.send(&order(Delivery::Courier { days: 2 }))?;
    let receipt = rx.recv_timeout(PATIENCE)?;
    println!(
        "customer: receipt for order {}: {} items, \"{}\"",
        receipt.order, receipt.total, receipt.message
    );
    drop(receipt); // a received message is a view into the ring: drop it to free its space

    let order = order(Delivery::Pickup);
    let mut times = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let start = Instant::now();
        tx.send(&order)?;
        drop(rx.recv_timeout(PATIENCE)?);
        times.push(start.elapsed());
    }
    times.sort();
    let percentile = |p: usize| times[(times.len() - 1) * p / 100];
    println!(
        "customer: round trip over {ROUND_TRIPS} orders: median {:.1?}, p99 {:.1?}, min {:.1?}",
        percentile(50),
        percentile(99),
        times[0]
    );
    Ok(())
}

/// The second process: answers each order with a receipt until the customer hangs up.
fn shop(orders: &str, receipts: &str) -> Result<(), Box<dyn Error>> {
    let mut rx = Channel::<Order>::open(orders)?.receiver()?;
    let mut tx = Channel::<Receipt>::open(receipts)?.sender()?;
    for number in 1.. {
        let order = match rx.recv() {
            Ok(order) => order,
            Err(RecvError::Disconnected) => return Ok(()), // the customer is done
            Err(e) => return Err(e.into()),
        };
        // `order` derefs to `ArchivedOrder`, read in place in shared memory.
        if number == 1 {
            let note = order.note.as_ref().map_or("none", |note| note.as_str());
            let delivery = match order.delivery {
                ArchivedDelivery::Pickup => "pickup".to_string(),
                ArchivedDelivery::Courier { days } => format!("courier in {days} days"),
            };
            println!(
                "shop: order from {}: items {:?}, note \"{note}\", delivery: {delivery}",
                order.customer,
                order.items.as_slice()
            );
        }
        let receipt = Receipt {
            order: number,
            total: order.items.len() as u32,
            message: format!("thank you, {}", order.customer),
        };
        drop(order);
        tx.send(&receipt)?;
    }
    Ok(())
}
