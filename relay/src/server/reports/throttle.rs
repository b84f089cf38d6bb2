//! The per-tenant bound on concurrent report queries: one tenant's administrators (a
//! script exporting in a loop, a page opened many times) cannot take every slot of the
//! index and slow every other tenant's reports.
//!
//! Each tenant (and the operator, as one more) has `running` slots and a queue of
//! `queued` places. A query takes a slot, or waits for one in the queue; when the queue
//! is full too, it is refused at once (`429 too_many_queries` with `Retry-After`, counted
//! in `relay_reports_throttled_total{reason}`). The slot is held until the answer is
//! complete: for a CSV export, until its last page is sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Whose queries share a bound: a tenant's administrators, or the operator.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Bucket {
    /// The holder of the admin token.
    Operator,
    /// A tenant's administrators.
    Tenant(String),
}

/// One bucket's slots and how many wait for one.
#[derive(Debug)]
struct Gate {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
}

/// Every bucket's gate. Buckets are tenants that verified a token (configured ones) and
/// the operator, so the map stays as small as the tenant list.
#[derive(Debug)]
pub(super) struct Throttle {
    gates: Mutex<HashMap<Bucket, Arc<Gate>>>,
    running: usize,
    queued: usize,
}

/// A query's slot; freed when dropped.
#[derive(Debug)]
pub(super) struct Slot {
    _permit: OwnedSemaphorePermit,
}

/// Why a query was refused a slot: the `reason` of `relay_reports_throttled_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// The bucket's slots are taken and its queue is full.
    QueueFull,
}

impl Refused {
    /// The metric's `reason` label.
    pub(super) fn reason(self) -> &'static str {
        match self {
            Refused::QueueFull => "queue_full",
        }
    }
}

impl Throttle {
    /// `running` slots (at least one) and `queued` waiting places per bucket.
    pub(super) fn new(running: usize, queued: usize) -> Throttle {
        Throttle {
            gates: Mutex::new(HashMap::new()),
            running: running.max(1),
            queued,
        }
    }

    fn gate(&self, bucket: &Bucket) -> Arc<Gate> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(gates.entry(bucket.clone()).or_insert_with(|| {
            Arc::new(Gate {
                slots: Arc::new(Semaphore::new(self.running)),
                waiting: AtomicUsize::new(0),
            })
        }))
    }

    /// A slot for `bucket`: at once when one is free, after waiting when the queue has
    /// room, else refused.
    pub(super) async fn admit(&self, bucket: &Bucket) -> Result<Slot, Refused> {
        let gate = self.gate(bucket);
        if let Ok(permit) = Arc::clone(&gate.slots).try_acquire_owned() {
            return Ok(Slot { _permit: permit });
        }
        // A place in the queue, counted before waiting so a burst cannot overfill it.
        let place = gate
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w < self.queued).then_some(w + 1)
            });
        if place.is_err() {
            return Err(Refused::QueueFull);
        }
        // Leaves the queue however the wait ends (a slot, or the caller gone).
        struct Leave<'a>(&'a AtomicUsize);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _leave = Leave(&gate.waiting);
        match Arc::clone(&gate.slots).acquire_owned().await {
            Ok(permit) => Ok(Slot { _permit: permit }),
            // The semaphore is never closed; were it, the query is refused, not run.
            Err(_) => Err(Refused::QueueFull),
        }
    }

    /// How many of `bucket`'s queries wait for a slot now.
    #[cfg(test)]
    fn waiting(&self, bucket: &Bucket) -> usize {
        self.gate(bucket).waiting.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> Bucket {
        Bucket::Tenant(name.into())
    }

    #[tokio::test]
    async fn a_tenant_beyond_its_slots_and_queue_is_refused_while_another_is_admitted() {
        let throttle = Arc::new(Throttle::new(1, 1));
        let first = throttle.admit(&tenant("a")).await.unwrap();
        let queued = tokio::spawn({
            let throttle = Arc::clone(&throttle);
            async move { throttle.admit(&tenant("a")).await.map(drop) }
        });
        // Waits for the second query to queue (bounded: a broken gate fails, never hangs).
        tokio::time::timeout(std::time::Duration::from_secs(20), async {
            while throttle.waiting(&tenant("a")) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the second query waits in the queue");
        assert_eq!(
            throttle.admit(&tenant("a")).await.unwrap_err(),
            Refused::QueueFull
        );
        let other = throttle.admit(&tenant("b")).await;
        assert!(other.is_ok(), "another tenant has its own slots");
        let operator = throttle.admit(&Bucket::Operator).await;
        assert!(operator.is_ok(), "so has the operator");
        drop(first);
        queued.await.unwrap().unwrap();
        assert_eq!(throttle.waiting(&tenant("a")), 0);
        assert!(
            throttle.admit(&tenant("a")).await.is_ok(),
            "slots come back"
        );
    }

    #[tokio::test]
    async fn without_a_queue_the_query_past_the_slots_is_refused_at_once() {
        let throttle = Throttle::new(2, 0);
        let _one = throttle.admit(&tenant("a")).await.unwrap();
        let _two = throttle.admit(&tenant("a")).await.unwrap();
        assert_eq!(
            throttle.admit(&tenant("a")).await.unwrap_err(),
            Refused::QueueFull
        );
    }
}
