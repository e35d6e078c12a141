//! Where bytes meet the core: the OpAMP wire format and the store, which the tasks use, and
//! the listeners and the admin API, which drive the tasks. No decisions about agents are made
//! here.

pub mod api;
pub mod listener;
pub mod protocol;
pub mod store;
pub mod transport;

/// The first error of type `T` in `error`'s chain of causes.
pub fn find_cause<'a, T: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        source = e.source();
    }
    None
}
