//! shmesh-bridge: mirrors shmesh rings and regions to other hosts, so a program on host B
//! reads what a program on host A writes, with the API it uses locally.
//!
//! A bridge runs on each host (the `shmesh-bridge` daemon, or a [`Bridge`] you drive with
//! [`Bridge::poll`]; it starts no threads). It is just another process to shared memory: it
//! reads the local segments it exports through the public `shmesh-ring` API and writes the
//! copies of the segments it imports through the same API. A copy has the exporter's name (or
//! the `local_name` the config gives), kind, capacity and schema fingerprint, so local programs
//! open it as usual.
//!
//! - SPSC rings: record by record, in order, nothing lost and nothing twice across dropped
//!   connections and restarts of either bridge (held reads on the exporting side, a delivery
//!   state beside the copy: [`state`]). The ends' lifecycle is mirrored too: when the writer
//!   goes, the copy's readers read everything and then see it gone; when the copy's reader
//!   goes, the writer sees it gone once its ring is full; new ones resume mirroring.
//! - Broadcast rings: the same, from the records the exporting bridge's own reader saw.
//! - Regions: by changed chunks, with their version; the copy only ever shows whole versions,
//!   in increasing order.
//! - TLS 1.3 with mutual authentication and an allowlist ([`tls`]), a versioned handshake that
//!   checks schemas stream by stream, checksummed frames with 64-bit sequence numbers
//!   ([`wire`]), backpressure through a per-stream window.
//!
//! # Modules
//!
//! [`bridge`] (the protocol and [`Bridge`]), [`config`] (the TOML file), [`link`] (the
//! [`Link`] trait frames travel through), [`tcp`] (TCP and TLS links), [`fault`] (a link that
//! drops, repeats, reorders, corrupts and truncates frames, for tests), [`wire`] (frames),
//! [`tls`] and [`certs`] (identities, `gen-certs`), [`state`] (crash-safe delivery state).
//!
//! Feature `net` (default): everything but `wire`, `link` and `fault`, which build without it
//! (the fuzz target does, to stay clear of the TLS stack).
//!
//! # Examples
//!
//! Two bridges in one process on loopback, mirroring a ring (plaintext here; the daemon's
//! configs use TLS). On one host the copy needs another name:
//!
//! ```
//! use std::path::Path;
//! use std::time::{Duration, Instant};
//! use shmesh_bridge::{config::Config, Bridge};
//! use shmesh_ring::SegmentBuilder;
//!
//! let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
//! let name = format!("doc-bridge.{}", std::process::id());
//! let a = Config::parse(&format!(r#"
//!     name = "host-a"
//!     listen = "127.0.0.1:{port}"
//!     [tls]
//!     enabled = false
//!     [[peers]]
//!     name = "host-b"
//!     [[export]]
//!     name = "{name}"
//! "#), Path::new("a.toml"))?;
//! let b = Config::parse(&format!(r#"
//!     name = "host-b"
//!     [tls]
//!     enabled = false
//!     [[peers]]
//!     name = "host-a"
//!     address = "127.0.0.1:{port}"
//!     [[import]]
//!     peer = "host-a"
//!     name = "{name}"
//!     local_name = "{name}.copy"
//! "#), Path::new("b.toml"))?;
//! let (mut a, mut b) = (Bridge::new(&a)?, Bridge::new(&b)?);
//!
//! let ring = SegmentBuilder::new(&name).capacity(4096).create()?;
//! let mut tx = ring.producer()?;
//! let mut grant = tx.try_claim(5)?;
//! grant.copy_from_slice(b"hello");
//! grant.commit(5);
//!
//! let deadline = Instant::now() + Duration::from_secs(30);
//! let copy = loop {
//!     a.poll();
//!     b.poll();
//!     if let Ok(copy) = SegmentBuilder::new(format!("{name}.copy")).open() {
//!         break copy;
//!     }
//!     assert!(Instant::now() < deadline, "no copy");
//! };
//! let mut rx = copy.consumer()?;
//! let record = loop {
//!     a.poll();
//!     b.poll();
//!     if let Ok(record) = rx.try_read() {
//!         break record;
//!     }
//!     assert!(Instant::now() < deadline, "nothing mirrored");
//! };
//! assert_eq!(&*record, b"hello");
//! # drop(record);
//! # drop((rx, copy));
//! # shmesh_ring::Segment::remove(&format!("{name}.copy"))?;
//! # shmesh_ring::Segment::remove(&format!("{name}.copy.bridge-state"))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "net")]
pub mod bridge;
#[cfg(feature = "net")]
pub mod certs;
#[cfg(feature = "net")]
pub mod config;
pub mod fault;
pub mod link;
#[cfg(feature = "net")]
pub mod state;
#[cfg(feature = "net")]
pub mod tcp;
#[cfg(feature = "net")]
pub mod tls;
pub mod wire;

#[cfg(feature = "net")]
pub use bridge::{Bridge, BridgeError, Event, LinkWrapper, Stats};
pub use link::{Link, LinkError};
