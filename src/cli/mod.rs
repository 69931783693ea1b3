//! What the `jwtgate` command line adds to the gateway: the local demo (`demo`), minting
//! test tokens (`token`), development certificates (`certs`), the container health probe
//! (`health`) and revoking through the admin API (`revoke`). `main.rs` dispatches.

pub mod certs;
pub mod demo;
mod demo_idp;
pub mod health;
pub mod revoke;
pub mod token;
