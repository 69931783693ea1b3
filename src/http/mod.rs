//! The front doors: listeners and connections (step 1), the proxied request path
//! (`proxy::handle`: accept -> `pipeline::decide` -> forward -> log), the forward-auth
//! decision listener (`authz`), and the end every exchange shares (`access`).

pub mod access;
pub mod authz;
pub mod conn;
pub mod forward;
pub mod listener;
pub mod proxy;
