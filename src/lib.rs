//! Corral: an OpAMP fleet-management server for OpenTelemetry collectors.

pub mod agent;
pub mod api;
pub mod channel;
pub mod cli;
pub mod config;
pub mod domain;
pub mod fleet;
pub mod packages;
pub mod protocol;
pub mod rollout;
pub mod server;
pub mod settings;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod transport;
