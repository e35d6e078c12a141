//! Where bytes meet the core: the OpAMP wire format and the store, which the tasks use, and
//! the listeners and the admin API, which drive the tasks. No decisions about agents are made
//! here.

pub mod api;
pub mod protocol;
pub mod store;
pub mod transport;
