//! Corral: an OpAMP fleet-management server for OpenTelemetry collectors.

pub mod domain;
pub mod protocol;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod agent;
pub mod fleet;
pub mod transport;
pub mod api;
pub mod server;
pub mod settings;
pub mod cli;
