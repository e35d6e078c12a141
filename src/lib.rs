//! Corral: an OpAMP fleet-management server for OpenTelemetry collectors.
//!
//! Three rooms, imported in one direction only (tasks → edge → core never runs back):
//! - [`core`]: pure decisions and models; no tokio, prost, sqlx or axum, no clock;
//! - [`edge`]: where bytes meet the core: the OpAMP wire, the listeners, the admin API, the
//!   store and the CLI;
//! - [`tasks`]: the long-lived tasks that drive the core: agent actors, the fleet registry and
//!   its silence watch, the rollout controller.

pub mod channel;
pub mod core;
pub mod edge;
pub mod server;
pub mod settings;
pub mod tasks;
pub mod telemetry;
