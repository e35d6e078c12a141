//! Where bytes meet the core: the OpAMP wire format, the listeners, the admin API, the store
//! and the CLI. No decisions about agents are made here.

pub mod api;
pub mod cli;
pub mod protocol;
pub mod store;
pub mod transport;
