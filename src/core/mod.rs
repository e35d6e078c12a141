//! The pure core: what an agent is, how its status and admin state move, what a configuration
//! and a rollout are and how a rollout is planned. Callers pass the time; nothing here does IO.

pub mod config;
pub mod domain;
pub mod keys;
pub mod lifecycle;
pub mod packages;
pub mod rollout;
pub mod session;
pub mod status;
