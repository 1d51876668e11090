//! The `max_connections` budget: a semaphore whose permits are client connections (and, with
//! HTTP/2, the waiting streams on them).
//!
//! A [`Permit`] is taken at accept and moved into the connection's task; dropping it, however
//! the task ends (a panic included), gives the place back and moves the open-connections
//! gauge. Nothing counts connections by hand, so the budget cannot drift.

use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Places for client connections.
#[derive(Debug)]
pub struct Budget {
    places: Arc<Semaphore>,
    size: usize,
    open: Gauge,
}

/// One place in the [`Budget`], held for as long as it lives.
#[derive(Debug)]
pub struct Permit {
    _place: OwnedSemaphorePermit,
    open: Gauge,
}

impl Budget {
    /// A budget of `size` places, counted on `open` while taken.
    pub fn new(size: usize, open: Gauge) -> Self {
        Self {
            places: Arc::new(Semaphore::new(size.min(Semaphore::MAX_PERMITS))),
            size,
            open,
        }
    }

    /// A place, or `None` when every one is taken.
    pub fn try_take(&self) -> Option<Permit> {
        let place = Arc::clone(&self.places).try_acquire_owned().ok()?;
        self.open.inc();
        Some(Permit {
            _place: place,
            open: self.open.clone(),
        })
    }

    /// How many places there are.
    pub fn size(&self) -> usize {
        self.size
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_come_back_when_permits_drop_even_in_a_panic() {
        let budget = Budget::new(2, Gauge::default());
        let a = budget.try_take().unwrap();
        let b = budget.try_take().unwrap();
        assert!(budget.try_take().is_none());
        assert_eq!(budget.open.get(), 2);
        drop(a);
        let c = budget.try_take().unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _held = c;
            panic!("a connection's task panics");
        }));
        assert!(panicked.is_err());
        assert_eq!(budget.open.get(), 1);
        drop(b);
        assert_eq!(budget.open.get(), 0);
        assert!(budget.try_take().is_some());
    }
}
