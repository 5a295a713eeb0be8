//! The simulated provider's rules: holds placed once per key, captured or released once,
//! and the books it shows agreeing with what happened.

use super::*;

fn request(amount_minor: i64) -> ProviderRequest<'static> {
    let key = if amount_minor > 1_000 {
        "key-high"
    } else {
        "key-low"
    };
    ProviderRequest {
        idempotency_key: key,
        order_id: Uuid::nil(),
        amount_minor,
        currency: "EUR",
    }
}

fn settle<'a>(key: &'a str, hold: &'a str) -> SettleRequest<'a> {
    SettleRequest {
        idempotency_key: key,
        hold,
        amount_minor: 500,
        currency: "EUR",
    }
}

#[tokio::test]
async fn approves_up_to_the_limit_and_declines_above_it() {
    let provider = SimulatedProvider::new(1_000);
    assert!(matches!(
        provider.authorize(request(1_000)).await.unwrap(),
        ProviderDecision::Approved { .. }
    ));
    let ProviderDecision::Declined { reason } = provider.authorize(request(1_001)).await.unwrap()
    else {
        panic!("expected a decline");
    };
    assert_eq!(
        reason,
        "amount 10.01 EUR exceeds the card's limit of 10.00 EUR"
    );
    assert_eq!(provider.open_holds().len(), 1, "a decline holds nothing");
}

#[tokio::test]
async fn faults_refuse_or_lose_answers_but_never_hold_twice() {
    let provider = SimulatedProvider::new(1_000);
    provider.set_faults(Faults {
        latency_ms: 0,
        failure_rate: 1.0,
    });
    for _ in 0..20 {
        assert!(provider.authorize(request(500)).await.is_err());
    }
    assert!(
        provider.holds() <= 1,
        "lost answers still hold once per key"
    );
    provider.set_faults(Faults::default());
    assert!(provider.authorize(request(500)).await.is_ok());
    assert_eq!(provider.holds(), 1);
}

#[tokio::test]
async fn a_repeated_key_gets_the_first_answer_and_holds_once() {
    let provider = SimulatedProvider::new(1_000);
    let first = provider.authorize(request(500)).await.unwrap();
    let again = provider.authorize(request(500)).await.unwrap();
    assert_eq!(first, again);
    assert_eq!((provider.calls(), provider.holds()), (2, 1));
}

#[tokio::test]
async fn a_capture_charges_the_hold_once_and_a_repeated_key_changes_nothing() {
    let provider = SimulatedProvider::new(1_000);
    provider.authorize(request(500)).await.unwrap();
    let first = provider.capture(settle("c-1", "key-low")).await.unwrap();
    let again = provider.capture(settle("c-1", "key-low")).await.unwrap();
    assert_eq!((first, again), (Settlement::Done, Settlement::Done));
    assert_eq!(provider.captures(), 1, "one capture for one key");
    assert_eq!(provider.captured_minor().get("EUR"), Some(&500));
    assert!(provider.open_holds().is_empty(), "the hold became a charge");
    // Another key cannot capture it again, nor release it.
    assert!(matches!(
        provider.capture(settle("c-2", "key-low")).await.unwrap(),
        Settlement::Refused { .. }
    ));
    assert!(matches!(
        provider.void(settle("v-1", "key-low")).await.unwrap(),
        Settlement::Refused { .. }
    ));
    assert_eq!((provider.captures(), provider.releases()), (1, 0));
}

#[tokio::test]
async fn a_void_releases_the_hold_once_and_it_can_no_longer_be_captured() {
    let provider = SimulatedProvider::new(1_000);
    provider.authorize(request(500)).await.unwrap();
    assert_eq!(
        provider.open_holds(),
        vec![OpenHold {
            order_id: Uuid::nil(),
            amount_minor: 500,
            currency: "EUR".into(),
        }]
    );
    for _ in 0..2 {
        let voided = provider.void(settle("v-1", "key-low")).await.unwrap();
        assert_eq!(voided, Settlement::Done);
    }
    assert_eq!(provider.releases(), 1);
    assert!(provider.open_holds().is_empty());
    assert!(matches!(
        provider.capture(settle("c-1", "key-low")).await.unwrap(),
        Settlement::Refused { .. }
    ));
    assert_eq!(provider.captures(), 0);
}

#[tokio::test]
async fn a_void_before_its_authorization_arrives_keeps_it_from_holding() {
    let provider = SimulatedProvider::new(1_000);
    // The void names a hold the provider has not seen (the authorization is still on its
    // way, or its answer was lost before it was placed).
    let voided = provider.void(settle("v-1", "key-low")).await.unwrap();
    assert_eq!(voided, Settlement::Done);
    let late = provider.authorize(request(500)).await.unwrap();
    assert!(
        matches!(late, ProviderDecision::Declined { .. }),
        "{late:?}"
    );
    assert_eq!(provider.holds(), 0);
    assert!(provider.open_holds().is_empty());
}

#[tokio::test]
async fn faults_never_capture_twice() {
    let provider = SimulatedProvider::new(1_000);
    provider.authorize(request(500)).await.unwrap();
    provider.set_faults(Faults {
        latency_ms: 0,
        failure_rate: 1.0,
    });
    for _ in 0..20 {
        assert!(provider.capture(settle("c-1", "key-low")).await.is_err());
    }
    provider.set_faults(Faults::default());
    assert_eq!(
        provider.capture(settle("c-1", "key-low")).await.unwrap(),
        Settlement::Done
    );
    assert_eq!(provider.captures(), 1);
    assert_eq!(provider.captured_minor().get("EUR"), Some(&500));
}

#[tokio::test]
async fn a_hold_from_before_the_books_began_is_captured_as_held() {
    // Payments restarted: the hold was placed by the provider of the process before.
    let provider = SimulatedProvider::new(1_000);
    let captured = provider.capture(settle("c-1", "key-low")).await.unwrap();
    assert_eq!(captured, Settlement::Done);
    assert_eq!((provider.captures(), provider.inherited()), (1, 1));
    // A key the books know held nothing: a declined authorization cannot be captured.
    provider.authorize(request(1_001)).await.unwrap();
    assert!(matches!(
        provider.capture(settle("c-2", "key-high")).await.unwrap(),
        Settlement::Refused { .. }
    ));
}
