//! Connections open and requests in flight per origin of one route, so that a new connection
//! is not made for a request that an idle one is about to serve.
//!
//! hyper-util's pool takes a connection back from a task it spawns once the connection is
//! ready again, and a request that finds no idle connection races a new connect against the
//! wait for one; when the returning task runs late (a loaded machine), the request takes the
//! returned connection and the new one is finished in the background: a spare connection,
//! through a proxy a spare tunnel. With as many connections open to an origin as requests in
//! flight, one of them is on its way back, so the connector waits for it (a short, bounded
//! while) and gives up once its request has taken another connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// The longest a new connection waits for one on its way back to the pool.
const RETURN_WAIT: Duration = Duration::from_millis(250);

/// How often the waiting connector looks again.
const RETURN_RECHECK: Duration = Duration::from_millis(2);

#[derive(Default, Clone, Copy)]
struct Count {
    open: usize,
    in_flight: usize,
}

/// The counts of one route, by origin (`scheme://authority`).
#[derive(Default)]
pub(crate) struct Demand(Mutex<HashMap<String, Count>>);

impl Demand {
    fn update(&self, origin: &str, change: impl FnOnce(&mut Count)) -> Count {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(origin.to_owned()).or_default();
        change(count);
        let now = *count;
        if now.open == 0 && now.in_flight == 0 {
            counts.remove(origin);
        }
        now
    }

    /// A request to `origin` is in flight until the guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>, origin: &str) -> Held {
        self.update(origin, |c| c.in_flight += 1);
        Held {
            demand: self.clone(),
            origin: origin.to_owned(),
            open: false,
        }
    }

    /// A connection to `origin` is open until the guard is dropped.
    pub(crate) fn opened(self: &Arc<Self>, origin: &str) -> Held {
        self.update(origin, |c| c.open += 1);
        Held {
            demand: self.clone(),
            origin: origin.to_owned(),
            open: true,
        }
    }

    /// True when at least as many connections to `origin` are open as requests are in
    /// flight to it: one of them is idle, or on its way back to the pool.
    fn surplus(&self, origin: &str) -> bool {
        let count = self.update(origin, |_| {});
        count.open > 0 && count.open >= count.in_flight
    }

    /// Wait (at most [`RETURN_WAIT`]) while a connection to `origin` is on its way back.
    /// False when `still_waiting` says the request no longer waits for this connection (it
    /// took the returned one): then none should be made.
    pub(crate) async fn wait_for_returning(
        &self,
        origin: &str,
        still_waiting: impl Fn() -> bool,
    ) -> bool {
        let until = Instant::now() + RETURN_WAIT;
        while self.surplus(origin) && Instant::now() < until {
            tokio::time::sleep(RETURN_RECHECK).await;
            if !still_waiting() {
                return false;
            }
        }
        true
    }
}

/// A request in flight or a connection open, counted until dropped.
pub(crate) struct Held {
    demand: Arc<Demand>,
    origin: String,
    open: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        let open = self.open;
        self.demand.update(&self.origin, |c| {
            if open {
                c.open = c.open.saturating_sub(1);
            } else {
                c.in_flight = c.in_flight.saturating_sub(1);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_per_request_in_flight_is_a_surplus() {
        let demand = Arc::new(Demand::default());
        let origin = "https://router.test:443";
        assert!(!demand.surplus(origin), "nothing open");
        let first = demand.enter(origin);
        assert!(
            !demand.surplus(origin),
            "a request and no connection: connect"
        );
        let conn = demand.opened(origin);
        drop(first);
        let second = demand.enter(origin);
        assert!(
            demand.surplus(origin),
            "the first request's connection is coming back"
        );
        let _third = demand.enter(origin);
        assert!(
            !demand.surplus(origin),
            "two requests, one connection: connect"
        );
        assert!(!demand.surplus("https://other.test:443"), "per origin");
        drop((second, conn));
        assert!(!demand.surplus(origin));
    }

    #[test]
    fn the_wait_ends_when_the_request_took_another_connection_or_after_a_bound() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let demand = Arc::new(Demand::default());
        let origin = "http://h:80";
        let _conn = demand.opened(origin);
        let _request = demand.enter(origin);
        assert!(!rt.block_on(demand.wait_for_returning(origin, || false)));
        assert!(
            rt.block_on(demand.wait_for_returning(origin, || true)),
            "bounded"
        );
        let idle = Arc::new(Demand::default());
        assert!(
            rt.block_on(idle.wait_for_returning(origin, || false)),
            "no surplus"
        );
    }
}
