//! The authorization rules that need no database: validation and replays.

use super::*;

fn request() -> AuthorizeRequest {
    AuthorizeRequest {
        idempotency_key: "order-1:authorize".into(),
        order_id: Uuid::nil(),
        customer_id: "c-1".into(),
        amount_minor: 100,
        currency: "EUR".into(),
    }
}

#[test]
fn validation_names_each_broken_rule() {
    assert_eq!(request().validate(), Ok(()));
    let cases = [
        (
            AuthorizeRequest {
                idempotency_key: String::new(),
                ..request()
            },
            "idempotency_key",
        ),
        (
            AuthorizeRequest {
                idempotency_key: "a/b".into(),
                ..request()
            },
            "may only contain",
        ),
        (
            AuthorizeRequest {
                idempotency_key: "\"k-1\"".into(),
                ..request()
            },
            "quoted",
        ),
        (
            AuthorizeRequest {
                idempotency_key: "k".repeat(faultline_idempotency::MAX_KEY_LEN + 1),
                ..request()
            },
            "idempotency_key",
        ),
        (
            AuthorizeRequest {
                customer_id: " ".into(),
                ..request()
            },
            "customer_id",
        ),
        (
            AuthorizeRequest {
                amount_minor: -1,
                ..request()
            },
            "negative",
        ),
        (
            AuthorizeRequest {
                currency: "eur".into(),
                ..request()
            },
            "currency",
        ),
    ];
    for (case, expected) in cases {
        let error = case.validate().unwrap_err();
        assert!(
            error.contains(expected),
            "{error} should mention {expected}"
        );
    }
}

#[test]
fn a_replay_with_other_parameters_is_key_reuse() {
    let stored = Payment {
        id: Uuid::nil(),
        order_id: Uuid::nil(),
        idempotency_key: "order-1:authorize".into(),
        customer_id: "c-1".into(),
        amount_minor: 100,
        currency: "EUR".into(),
        status: PaymentStatus::Authorized,
        decline_reason: None,
        settling: None,
    };
    let different = AuthorizeRequest {
        amount_minor: 999,
        ..request()
    };
    assert!(matches!(
        stored.replay(&different),
        Err(PaymentError::KeyReused(_))
    ));
}

#[test]
fn a_replay_tells_what_became_of_the_payment() {
    let stored = |status| Payment {
        id: Uuid::nil(),
        order_id: Uuid::nil(),
        idempotency_key: "order-1:authorize".into(),
        customer_id: "c-1".into(),
        amount_minor: 100,
        currency: "EUR".into(),
        status,
        decline_reason: None,
        settling: None,
    };
    let payment_id = Uuid::nil();
    assert_eq!(
        stored(PaymentStatus::Captured).replay(&request()).unwrap(),
        Authorization::Captured { payment_id }
    );
    assert_eq!(
        stored(PaymentStatus::Voided).replay(&request()).unwrap(),
        Authorization::Voided { payment_id }
    );
    assert_eq!(
        stored(PaymentStatus::Authorized)
            .replay(&request())
            .unwrap(),
        Authorization::Authorized { payment_id }
    );
    assert!(matches!(
        stored(PaymentStatus::Pending).replay(&request()),
        Err(PaymentError::InProgress(_))
    ));
}
