//! The long-lived tasks: one actor per agent, the fleet registry that routes to them, and the
//! rollout controller.

pub mod agent;
pub mod controller;
pub mod fleet;
