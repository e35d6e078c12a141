//! Corral: an OpAMP fleet-management server for OpenTelemetry collectors.

pub mod domain;
pub mod protocol;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod agent;
pub mod fleet;
