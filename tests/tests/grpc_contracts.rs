//! The gRPC edges of inventory and payments: idempotent authorization and proper status
//! codes for bad requests.

use faultline_e2e::{Options, ProductSpec, Service, System};
use faultline_proto::common::v1::Money;
use faultline_proto::inventory::v1 as inventory;
use faultline_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use faultline_proto::payments::v1 as payments;
use faultline_proto::payments::v1::payments_service_client::PaymentsServiceClient;
use tonic::Code;
use uuid::Uuid;

fn authorize(key: &str, order_id: Uuid, amount_minor: i64) -> payments::AuthorizeRequest {
    payments::AuthorizeRequest {
        idempotency_key: key.into(),
        order_id: order_id.to_string(),
        amount: Some(Money {
            amount_minor,
            currency: "EUR".into(),
        }),
        customer_id: "alice".into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn authorize_is_idempotent_per_key_and_refuses_misuse() -> anyhow::Result<()> {
    let system = System::start(Options::default()).await?;
    // Only checkout may authorize.
    let client = PaymentsServiceClient::new(
        system
            .client
            .grpc_channel_as("checkout", "payments", &system.payments_url)
            .await?,
    );
    let order = Uuid::now_v7();

    // Twenty concurrent retries of one request: one payment, twenty identical answers. A
    // duplicate arriving while the first is in flight is told ABORTED with a pushback hint,
    // and retries as gRPC clients do.
    let mut calls = Vec::new();
    for _ in 0..20 {
        let mut client = client.clone();
        let request = authorize("key-1", order, 1_000);
        calls.push(tokio::spawn(async move {
            loop {
                match client.authorize(request.clone()).await {
                    Err(status) if status.code() == Code::Aborted => {
                        let pushback: u64 = status
                            .metadata()
                            .get("grpc-retry-pushback-ms")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(100);
                        tokio::time::sleep(std::time::Duration::from_millis(pushback)).await;
                    }
                    other => return other,
                }
            }
        }));
    }
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await??.into_inner());
    }
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    assert_eq!(
        answers[0].status(),
        payments::AuthorizationStatus::Authorized
    );
    // One payment row is what the UNIQUE constraints guarantee anyway; what matters is that
    // the provider was made to hold the funds once.
    let (status, provider) = system.admin(Service::Payments, "/provider").await?;
    assert_eq!(status, 200, "{provider}");
    let provider: serde_json::Value = serde_json::from_str(&provider)?;
    assert_eq!(
        provider["holds"], 1,
        "holds placed at the provider: {provider}"
    );

    let mut client = client.clone();
    let reused = client
        .authorize(authorize("key-1", order, 2_000))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::FailedPrecondition, "{reused}");
    let second = client
        .authorize(authorize("key-2", order, 1_000))
        .await
        .unwrap_err();
    assert_eq!(second.code(), Code::AlreadyExists, "{second}");

    let declined = client
        .authorize(authorize("key-3", Uuid::now_v7(), 90_000))
        .await?
        .into_inner();
    assert_eq!(declined.status(), payments::AuthorizationStatus::Declined);
    assert!(declined.decline_reason.contains("limit"), "{declined:?}");

    let bad_requests = [
        authorize("", Uuid::now_v7(), 1_000),
        authorize("key with spaces", Uuid::now_v7(), 1_000),
        authorize("key-4", Uuid::now_v7(), -1),
        payments::AuthorizeRequest {
            order_id: "not-a-uuid".into(),
            ..authorize("key-5", Uuid::now_v7(), 1_000)
        },
        payments::AuthorizeRequest {
            amount: None,
            ..authorize("key-6", Uuid::now_v7(), 1_000)
        },
        payments::AuthorizeRequest {
            amount: Some(Money {
                amount_minor: 1_000,
                currency: "euro".into(),
            }),
            ..authorize("key-7", Uuid::now_v7(), 1_000)
        },
    ];
    for request in bad_requests {
        let status = client.authorize(request.clone()).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{request:?}: {status}"
        );
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&system.database(Service::Payments).await?)
        .await?;
    assert_eq!(
        rows, 2,
        "only the first authorization and the decline were stored"
    );

    // This test plays checkout without a saga: its authorization belongs to no order, so
    // the end-of-test invariants (nothing left authorized) do not apply to it.
    system.discard().await
}

#[tokio::test(flavor = "multi_thread")]
async fn inventory_refuses_bad_catalog_requests() -> anyhow::Result<()> {
    let system = System::start(Options::default()).await?;
    system
        .client
        .load_catalog(&[ProductSpec {
            sku: "LAMP-01",
            name: "Desk lamp",
            price_cents: 2_490,
            stock: 5,
        }])
        .await?;
    let mut client = InventoryServiceClient::new(
        system
            .client
            .grpc_channel("inventory", system.client.inventory_url())
            .await?,
    );

    let found = client
        .get_products(inventory::GetProductsRequest {
            skus: vec!["LAMP-01".into(), "NOPE-1".into()],
        })
        .await?
        .into_inner();
    assert_eq!(found.products.len(), 1);
    assert_eq!(found.missing_skus, vec!["NOPE-1".to_owned()]);

    for skus in [vec![], vec!["bad sku".to_owned()], vec!["x".repeat(65)]] {
        let status = client
            .get_products(inventory::GetProductsRequest { skus: skus.clone() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{skus:?}: {status}");
    }

    let upsert = |price: i64, stock: i64, currency: &str| inventory::UpsertProductsRequest {
        products: vec![inventory::ProductUpsert {
            sku: "LAMP-01".into(),
            name: "Desk lamp".into(),
            unit_price: Some(Money {
                amount_minor: price,
                currency: currency.into(),
            }),
            add_stock: stock,
        }],
        idempotency_key: uuid::Uuid::new_v4().to_string(),
    };
    for request in [
        upsert(-1, 1, "EUR"),
        upsert(100, -1, "EUR"),
        upsert(100, 1, "eur"),
    ] {
        let status = client.upsert_products(request.clone()).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{request:?}: {status}"
        );
    }
    let stock: i64 = sqlx::query_scalar("SELECT loaded FROM products WHERE sku = 'LAMP-01'")
        .fetch_one(&system.database(Service::Inventory).await?)
        .await?;
    assert_eq!(stock, 5, "refused upserts changed nothing");

    // Adding stock is a delta: a retried call (same key) is answered, not applied again;
    // the key with other products is refused, and a call without a key too.
    let add_three = upsert(2_490, 3, "EUR");
    let first = client
        .upsert_products(add_three.clone())
        .await?
        .into_inner();
    let retried = client
        .upsert_products(add_three.clone())
        .await?
        .into_inner();
    assert_eq!(first, retried, "the retry gets the first call's answer");
    let loaded: i64 = sqlx::query_scalar("SELECT loaded FROM products WHERE sku = 'LAMP-01'")
        .fetch_one(&system.database(Service::Inventory).await?)
        .await?;
    assert_eq!(loaded, 8, "three units added once, not twice");
    let mut other = upsert(2_490, 4, "EUR");
    other.idempotency_key = add_three.idempotency_key.clone();
    let status = client.upsert_products(other).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status}");
    let mut keyless = upsert(2_490, 1, "EUR");
    keyless.idempotency_key.clear();
    let status = client.upsert_products(keyless).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");

    system.teardown().await
}
