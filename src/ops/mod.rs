//! Operating the gateway: Prometheus metrics (`metrics`, a leaf every layer may count in),
//! the admin API (`admin`) and config reload (`reload`).

pub mod admin;
pub mod metrics;
pub mod reload;
