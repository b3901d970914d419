//! Request/reply between processes: one server, three clients, each getting its own answers.
//!
//! ```text
//! cargo run --release --example reqrep
//! ```
//!
//! The first process serves `reqrep-<pid>`, a price service: it receives quote requests from
//! every client over one MPSC ring and replies to each client on that client's own reply ring.
//! It starts three copies of itself as clients; each asks for quotes, checks that every answer
//! is the one to its own question, times the calls and prints a summary. The server stops when
//! the three have said goodbye.

use std::error::Error;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use shmesh::service::{Client, Server};

#[derive(rkyv::Archive, rkyv::Serialize)]
struct Quote {
    item: String,
    quantity: u32,
}

#[derive(rkyv::Archive, rkyv::Serialize)]
struct Price {
    item: String,
    cents: u64,
}

const CLIENTS: usize = 3;
const CALLS: u32 = 2000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [] => server(),
        [flag, service, who] if flag == "--client" => client(service, who),
        _ => Err("usage: reqrep (the clients are started by the program itself)".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reqrep: {e}");
            ExitCode::FAILURE
        }
    }
}

fn unit_price(item: &str) -> u64 {
    item.bytes().map(u64::from).sum()
}

fn server() -> Result<(), Box<dyn Error>> {
    let mut server = Server::<Quote, Price>::create(format!("reqrep-{}", std::process::id()))?;
    let mut children = Vec::new();
    for who in ["ann", "bob", "cy"].iter().take(CLIENTS) {
        children.push(
            Command::new(std::env::current_exe()?)
                .args(["--client", server.name(), who])
                .spawn()
                .map_err(|e| format!("cannot start a client: {e}"))?,
        );
    }
    // Every client makes CALLS calls; serve them all (clients connect, call and say goodbye
    // concurrently; each reply goes to the client that asked).
    let total = CLIENTS as u64 * u64::from(CALLS);
    let mut served = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while served < total {
        if Instant::now() > deadline {
            return Err(format!("only {served} of {total} requests came within 60 s").into());
        }
        let request = match server.recv_timeout(Duration::from_millis(100)) {
            Ok(request) => request,
            Err(shmesh::channel::RecvError::Timeout) => continue,
            Err(e) => return Err(e.into()),
        };
        let price = Price {
            item: request.item.to_string(),
            cents: unit_price(&request.item) * u64::from(request.quantity.to_native()),
        };
        request.reply(&price)?;
        served += 1;
    }
    for mut child in children {
        let status = child.wait()?;
        if !status.success() {
            return Err(format!("a client failed ({status})").into());
        }
    }
    println!("server: {served} requests from {CLIENTS} clients answered");
    Ok(())
}

fn client(service: &str, who: &str) -> Result<(), Box<dyn Error>> {
    let mut client = Client::<Quote, Price>::connect(service)?;
    let item = format!("{who}-widget");
    let mut times = Vec::with_capacity(CALLS as usize);
    for quantity in 1..=CALLS {
        let start = Instant::now();
        let price = client.call_timeout(
            &Quote {
                item: item.clone(),
                quantity,
            },
            Duration::from_secs(10),
        )?;
        times.push(start.elapsed());
        // Each client gets the answer to its own question, never another client's.
        if price.item != item.as_str() || price.cents != unit_price(&item) * u64::from(quantity) {
            return Err(format!("client {who}: wrong answer for quantity {quantity}").into());
        }
    }
    times.sort();
    println!(
        "client {who}: {CALLS} calls answered correctly, median round trip {:.1?}",
        times[times.len() / 2]
    );
    Ok(())
}
