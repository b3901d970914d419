//! shmesh-bridge: mirrors shmesh rings and regions to other hosts.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod certs;
pub mod config;
pub mod fault;
pub mod link;
pub mod tls;
pub mod wire;
