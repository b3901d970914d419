//! shmesh-bridge: mirrors shmesh rings and regions to other hosts.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod bridge;
pub mod certs;
pub mod config;
pub mod fault;
pub mod link;
pub mod state;
pub mod tcp;
pub mod tls;
pub mod wire;

pub use bridge::{Bridge, BridgeError, Event, LinkWrapper, Stats};
pub use link::{Link, LinkError};
