//! Operating the gateway: Prometheus metrics (`metrics`, a leaf every layer may count in;
//! `process` and `exposition` beside it; OpenTelemetry traces, `otel`, another such
//! leaf), the admin API (`admin`), config reload (`reload`) and certificate rotation
//! (`certs`).

pub mod admin;
pub mod certs;
pub mod exposition;
pub mod logfields;
pub mod logline;
pub mod logtime;
pub mod logwriter;
pub mod metrics;
pub mod otel;
pub mod process;
pub mod reload;
pub mod textline;
