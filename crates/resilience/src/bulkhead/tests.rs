//! Bulkheads on paused time: the bounded wait, a zero wait, a pool per tenant, settings.

use std::sync::Mutex;

use super::*;
use tokio::sync::oneshot;
use tower::{ServiceExt, service_fn};

type Gate = Arc<Mutex<Vec<oneshot::Sender<()>>>>;

/// A service whose calls stay in flight until the test opens their gate.
fn gated(
    gate: Gate,
) -> impl Service<&'static str, Response = (), Error = BoxError, Future: Send> + Clone {
    service_fn(move |_tenant: &'static str| {
        let (open, wait) = oneshot::channel();
        gate.lock().unwrap().push(open);
        async move {
            let _ = wait.await;
            Ok::<(), BoxError>(())
        }
    })
}

fn config(max_concurrent: u32, max_wait_ms: u64) -> BulkheadConfig {
    BulkheadConfig {
        max_concurrent,
        max_wait_ms,
    }
}

#[tokio::test(start_paused = true)]
async fn waits_for_a_slot_then_rejects_after_the_bound() {
    let gate = Gate::default();
    let bulkhead = Bulkhead::new("inventory", &config(1, 50));
    let svc = bulkhead.layer(gated(gate.clone()));

    let first = tokio::spawn(svc.clone().oneshot("a"));
    tokio::task::yield_now().await;
    assert_eq!(bulkhead.available(), 0);

    // A second call waits, and gets the slot when the first finishes within the bound.
    let second = tokio::spawn(svc.clone().oneshot("a"));
    tokio::time::advance(Duration::from_millis(30)).await;
    gate.lock().unwrap().remove(0).send(()).unwrap();
    first.await.unwrap().unwrap();
    tokio::task::yield_now().await;
    gate.lock().unwrap().remove(0).send(()).unwrap();
    second.await.unwrap().unwrap();

    // A third, while the slot stays taken, is rejected after exactly 50 ms.
    let _held = tokio::spawn(svc.clone().oneshot("a"));
    tokio::task::yield_now().await;
    let start = Instant::now();
    let err = svc.clone().oneshot("a").await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_millis(50));
    assert!(matches!(
        ResilienceError::find(&*err),
        Some(ResilienceError::BulkheadFull { name, waited })
            if &**name == "inventory" && *waited == Duration::from_millis(50)
    ));
}

#[tokio::test(start_paused = true)]
async fn zero_wait_rejects_at_once() {
    let gate = Gate::default();
    let svc = Bulkhead::new("psp", &config(1, 0)).layer(gated(gate.clone()));
    let _held = tokio::spawn(svc.clone().oneshot("a"));
    tokio::task::yield_now().await;
    let start = Instant::now();
    assert!(svc.oneshot("a").await.is_err());
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn each_tenant_has_its_own_slots() {
    let gate = Gate::default();
    let bulkhead = KeyedBulkhead::new("checkout", &config(1, 0), |tenant: &&'static str| *tenant);
    let svc = bulkhead.layer(gated(gate.clone()));
    let _busy = tokio::spawn(svc.clone().oneshot("acme"));
    tokio::task::yield_now().await;
    assert!(
        svc.clone().oneshot("acme").await.is_err(),
        "acme is at its limit"
    );
    let other = tokio::spawn(svc.clone().oneshot("globex"));
    tokio::task::yield_now().await;
    gate.lock().unwrap().remove(1).send(()).unwrap();
    other.await.unwrap().unwrap();
    assert_eq!(bulkhead.tracked_keys(), 2);
}

#[test]
fn validation_names_the_setting() {
    let err = config(0, 10).validate("X__BULKHEAD").unwrap_err();
    assert_eq!(err.setting, "X__BULKHEAD__MAX_CONCURRENT");
}
