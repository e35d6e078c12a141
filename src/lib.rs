//! Corral: an OpAMP fleet-management server for OpenTelemetry collectors.
//!
//! Three rooms:
//! - [`core`]: pure decisions and models; no tokio, prost, sqlx or axum, no clock;
//! - [`tasks`]: the long-lived tasks that drive the core: agent actors, the fleet registry and
//!   its silence watch, the rollout controller;
//! - [`edge`]: where bytes meet the core: the OpAMP wire format and the store below the tasks,
//!   the listeners and the admin API above them.
//!
//! Imports run one way: `cli` → `server` → `edge::{transport, api}` → `tasks` →
//! `edge::{store, protocol}` → `core`.

pub mod channel;
pub mod cli;
pub mod core;
pub mod edge;
pub mod server;
pub mod settings;
pub mod tasks;
pub mod telemetry;
