//! What the `jwtgate` command line adds to the gateway: the local demo (`demo`), minting
//! test tokens (`token`) and development certificates (`certs`). `main.rs` dispatches.

pub mod certs;
pub mod demo;
pub mod token;
