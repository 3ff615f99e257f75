//! The memory budget for messages being received.
//!
//! Each SMTP DATA/BDAT body and IMAP APPEND literal is held in memory until
//! it is in the log, so a thousand clients each sending a message at the
//! size limit would hold a thousand times that limit. Every session takes
//! its message's bytes from this one budget (`limits.max_inflight_mib`) as
//! the message grows; when the budget is spent a new message is refused
//! with a temporary error (`452 4.3.1`, `NO [LIMIT]`) and its bytes are
//! read and dropped, so the total held stays bounded by configuration.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget is counted in units of this many bytes.
const UNIT: usize = 64 * 1024;

pub struct Budget {
    units: Arc<Semaphore>,
    total: usize,
}

impl Budget {
    pub fn new(mib: usize) -> Budget {
        let total = mib.saturating_mul(1 << 20) / UNIT;
        Budget {
            units: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Bytes not held by any message right now.
    pub fn available(&self) -> usize {
        self.units.available_permits().saturating_mul(UNIT)
    }

    /// Bytes of the whole budget.
    pub fn capacity(&self) -> usize {
        self.total.saturating_mul(UNIT)
    }

    /// A holding of nothing yet, to grow as a message arrives.
    pub fn hold(&self) -> Held {
        Held {
            units: self.units.clone(),
            permit: None,
            bytes: 0,
        }
    }
}

/// Bytes one message holds of the budget; they go back when it is dropped.
pub struct Held {
    units: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
}

impl Held {
    /// Makes the holding cover `bytes`; `false` (and nothing more held)
    /// when the budget cannot give that much now.
    pub fn grow_to(&mut self, bytes: usize) -> bool {
        if bytes <= self.bytes {
            return true;
        }
        let have = self.permit.as_ref().map_or(0, |p| p.num_permits());
        let need = bytes.div_ceil(UNIT);
        if need <= have {
            self.bytes = bytes;
            return true;
        }
        let Ok(more) = u32::try_from(need - have) else {
            return false;
        };
        match self.units.clone().try_acquire_many_owned(more) {
            Ok(p) => {
                match &mut self.permit {
                    Some(held) => held.merge(p),
                    None => self.permit = Some(p),
                }
                self.bytes = bytes;
                true
            }
            Err(_) => false,
        }
    }

    /// Gives everything back (the message was stored or refused).
    pub fn release(&mut self) {
        self.permit = None;
        self.bytes = 0;
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdings_are_bounded_and_given_back() {
        let b = Budget::new(1);
        assert_eq!(b.capacity(), 1 << 20);
        let mut x = b.hold();
        assert!(x.grow_to(600 * 1024));
        let mut y = b.hold();
        assert!(!y.grow_to(600 * 1024), "the budget is spent");
        assert!(y.grow_to(384 * 1024), "what is left can be used");
        assert_eq!(b.available(), 0);
        drop(x);
        assert!(y.grow_to(900 * 1024));
        y.release();
        assert_eq!(b.available(), 1 << 20);
        assert!(
            !b.hold().grow_to(usize::MAX),
            "absurd sizes fail, never wrap"
        );
    }
}
