//! vcenter-shim: fdm's management plane.
//!
//! It keeps the inventory (hosts, datastores, VMs, HA settings) in SQLite, validates every change,
//! computes admission control, and publishes the resulting `ClusterConfig` to every datastore, where
//! the agents read it. It reads back the master's `ClusterReport` from the datastores to serve state
//! and events. Agents never talk to it directly, so HA keeps working while it is down. `fdm-shim`
//! serves the HTTP API (module `api`) and its metrics and health endpoints (module `metrics`); `fdmctl` is the operator's client for it, built on the
//! typed client in module `client`.

pub mod admission;
pub mod api;
pub mod cli;
pub mod client;
pub mod dsio;
pub mod error;
pub mod metrics;
pub mod model;
pub mod service;
pub mod store;
pub mod validate;
