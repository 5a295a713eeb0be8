//! In-process request coalescing ("single flight"): concurrent misses of one key share one
//! load.
//!
//! The first caller for a key leads: it runs its work and publishes the result. Callers
//! arriving meanwhile follow: they wait for that result instead of running their own. This
//! must hold with the L1 switched off, so it does not lean on moka's `get_with` (which would
//! also keep every result in the L1). If the leader is cancelled (its request dropped), its
//! followers are woken and one of them leads in its place, so a dropped request never
//! strands the others. Results travel type-erased (one map serves every loader's result
//! type); a follower that finds a result of another type, which only two call sites using
//! different error types for one key could cause, is handed its work back to run alone.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

type Erased = Arc<dyn Any + Send + Sync>;

/// Flights in progress, by key.
#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<String, watch::Sender<Option<Erased>>>>,
}

impl std::fmt::Debug for Flights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flights")
            .field("in_flight", &self.len())
            .finish()
    }
}

/// How a caller got its result.
#[derive(Debug)]
pub(crate) enum Flight<R, F> {
    /// It ran the work.
    Led(R),
    /// It shared the result of another caller's run.
    Joined(R),
    /// The flight in progress carries another result type; here is the work, run it alone.
    Alone(F),
}

/// The leader's hold on its flight: removes it from the map when the leader finishes or is
/// dropped, which wakes followers still waiting (they lead again if no result was sent).
struct Lead<'a> {
    flights: &'a Flights,
    key: &'a str,
    sender: watch::Sender<Option<Erased>>,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        let mut map = self
            .flights
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if map
            .get(self.key)
            .is_some_and(|current| current.same_channel(&self.sender))
        {
            map.remove(self.key);
        }
    }
}

enum Role<'a> {
    Leader(Lead<'a>),
    Follower(watch::Receiver<Option<Erased>>),
}

impl Flights {
    /// Runs `work` for `key` unless a flight for it is in progress, whose result is then
    /// shared.
    pub(crate) async fn run<R, F, Fut>(&self, key: &str, work: F) -> Flight<R, F>
    where
        R: Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = R>,
    {
        loop {
            let role = {
                let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
                match map.get(key) {
                    Some(sender) => Role::Follower(sender.subscribe()),
                    None => {
                        let (sender, _) = watch::channel(None);
                        map.insert(key.to_owned(), sender.clone());
                        Role::Leader(Lead {
                            flights: self,
                            key,
                            sender,
                        })
                    }
                }
            };
            match role {
                Role::Leader(lead) => {
                    let result = work().await;
                    // Publish before leaving, so every follower finds it.
                    lead.sender.send_replace(Some(Arc::new(result.clone())));
                    drop(lead);
                    return Flight::Led(result);
                }
                Role::Follower(mut receiver) => {
                    let shared = match receiver.wait_for(Option::is_some).await {
                        Ok(shared) => shared.clone(),
                        // The leader was dropped before finishing: try to lead.
                        Err(_) => continue,
                    };
                    return match shared.as_ref().and_then(|r| r.downcast_ref::<R>()) {
                        Some(result) => Flight::Joined(result.clone()),
                        None => Flight::Alone(work),
                    };
                }
            }
        }
    }

    /// Flights in progress.
    pub(crate) fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::sync::Notify;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_run() {
        let flights = Arc::new(Flights::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (flights, runs, gate) = (flights.clone(), runs.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                let flight = flights
                    .run("k", || async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        gate.notified().await;
                        7_u32
                    })
                    .await;
                match flight {
                    Flight::Led(v) => (v, true),
                    Flight::Joined(v) => (v, false),
                    Flight::Alone(_) => panic!("one result type"),
                }
            }));
        }
        // Once every task has subscribed (the map's sender counts every receiver), release
        // the leader.
        loop {
            tokio::task::yield_now().await;
            let followers = flights
                .map
                .lock()
                .unwrap()
                .get("k")
                .map(|s| s.receiver_count());
            if followers == Some(99) {
                break;
            }
        }
        gate.notify_one();
        let mut led = 0;
        for task in tasks {
            let (value, did_lead) = task.await.unwrap();
            assert_eq!(value, 7);
            led += usize::from(did_lead);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(led, 1);
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_over_and_leaves_nothing_behind() {
        let flights = Flights::default();
        let never = flights.run("k", std::future::pending::<u32>);
        // Polled once (so it leads), then dropped.
        assert!(tokio::time::timeout(Duration::ZERO, never).await.is_err());
        assert_eq!(flights.len(), 0);
        assert!(matches!(
            flights.run("k", || async { 3_u32 }).await,
            Flight::Led(3)
        ));
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn a_follower_of_a_cancelled_leader_leads() {
        let flights = Arc::new(Flights::default());
        let gate = Arc::new(Notify::new());
        let leader = {
            let (flights, gate) = (flights.clone(), gate.clone());
            tokio::spawn(async move {
                flights
                    .run("k", || async move {
                        gate.notify_one();
                        std::future::pending::<u32>().await
                    })
                    .await;
            })
        };
        gate.notified().await;
        let follower = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run("k", || async { 5_u32 }).await })
        };
        while flights
            .map
            .lock()
            .unwrap()
            .get("k")
            .map(|s| s.receiver_count())
            != Some(1)
        {
            tokio::task::yield_now().await;
        }
        leader.abort();
        assert!(matches!(follower.await.unwrap(), Flight::Led(5)));
    }

    #[tokio::test]
    async fn another_result_type_gets_its_work_back() {
        let flights = Arc::new(Flights::default());
        let gate = Arc::new(Notify::new());
        let started = Arc::new(Notify::new());
        let leader = {
            let (flights, gate, started) = (flights.clone(), gate.clone(), started.clone());
            tokio::spawn(async move {
                flights
                    .run("k", || async move {
                        started.notify_one();
                        gate.notified().await;
                        1_u32
                    })
                    .await
            })
        };
        started.notified().await;
        let other = {
            let flights = flights.clone();
            tokio::spawn(async move {
                match flights.run("k", || async { "text" }).await {
                    Flight::Alone(work) => work().await,
                    _ => panic!("a u32 flight cannot answer a &str caller"),
                }
            })
        };
        while flights
            .map
            .lock()
            .unwrap()
            .get("k")
            .map(|s| s.receiver_count())
            != Some(1)
        {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        assert!(matches!(leader.await.unwrap(), Flight::Led(1)));
        assert_eq!(other.await.unwrap(), "text");
    }
}
