//! Bad input gets a clear RFC 9457 problem and writes nothing; a malformed Kafka message is
//! parked on the dead-letter topic and its partition keeps moving.

use std::collections::BTreeMap;
use std::time::Duration;

use faultline_e2e::{Options, ProductSpec, Service, System};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::StatusCode;
use serde_json::json;

const CATALOG: [ProductSpec; 1] = [ProductSpec {
    sku: "LAMP-01",
    name: "Desk lamp",
    price_cents: 2_490,
    stock: 100,
}];

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_problem_details_and_write_nothing() -> anyhow::Result<()> {
    let system = System::start(Options::default()).await?;
    let client = &system.client;
    client.load_catalog(&CATALOG).await?;
    let json_type = Some("application/json");
    let fresh = || Some(uuid::Uuid::new_v4().to_string());

    let body = json!({"items": [{"sku": "LAMP-01", "quantity": 1}]});
    let answer = client.post_order(body.to_string(), json_type, None).await?;
    answer.assert_problem(StatusCode::BAD_REQUEST, "idempotency-key-missing");
    let long_key = "k".repeat(256);
    let answer = client
        .post_order(body.to_string(), json_type, Some(&long_key))
        .await?;
    answer.assert_problem(StatusCode::BAD_REQUEST, "idempotency-key-invalid");
    assert!(
        answer.body["detail"]
            .as_str()
            .unwrap()
            .contains("at most 255 characters")
    );
    let answer = client
        .post_order(body.to_string(), json_type, Some("white space"))
        .await?;
    answer.assert_problem(StatusCode::BAD_REQUEST, "idempotency-key-invalid");
    assert!(
        answer.body["detail"]
            .as_str()
            .unwrap()
            .contains("may only contain")
    );

    let answer = client
        .post_order(r#"{"items": ["#, json_type, fresh().as_deref())
        .await?;
    answer.assert_problem(StatusCode::BAD_REQUEST, "malformed-json");

    let body = json!({"items": [{"sku": "LAMP-01", "quantity": "two"}]});
    let answer = client
        .post_order(body.to_string(), json_type, fresh().as_deref())
        .await?;
    answer.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid-body");
    assert!(answer.body["detail"].as_str().unwrap().contains("quantity"));

    let body = json!({"items": [{"sku": "LAMP-01", "quantity": 1}], "coupon": "x"});
    let answer = client
        .post_order(body.to_string(), json_type, fresh().as_deref())
        .await?;
    answer.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid-body");
    assert!(answer.body["detail"].as_str().unwrap().contains("coupon"));

    // The customer is the token's subject; a body naming one is refused, not obeyed.
    let body = json!({"customer_id": "someone-else", "items": [{"sku": "LAMP-01", "quantity": 1}]});
    let answer = client
        .post_order(body.to_string(), json_type, fresh().as_deref())
        .await?;
    answer.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid-body");
    assert!(
        answer.body["detail"]
            .as_str()
            .unwrap()
            .contains("customer_id")
    );

    let body = json!({"items": []});
    let answer = client
        .post_order(body.to_string(), json_type, fresh().as_deref())
        .await?;
    answer.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid-order");
    assert_eq!(answer.body["errors"][0]["field"], "items");

    for quantity in [0, -3] {
        let body = json!({"items": [{"sku": "LAMP-01", "quantity": quantity}]});
        let answer = client
            .post_order(body.to_string(), json_type, fresh().as_deref())
            .await?;
        answer.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid-order");
        assert_eq!(answer.body["errors"][0]["field"], "items[0].quantity");
    }

    let body = json!({"items": [{"sku": "NOPE-99", "quantity": 1}]});
    let answer = client
        .post_order(body.to_string(), json_type, fresh().as_deref())
        .await?;
    answer.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "unknown-products");
    assert_eq!(answer.body["unknown_skus"], json!(["NOPE-99"]));

    let huge = format!(
        r#"{{"items": [{{"sku": "{}", "quantity": 1}}]}}"#,
        "x".repeat(200_000)
    );
    let answer = client
        .post_order(huge, json_type, fresh().as_deref())
        .await?;
    answer.assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large");

    let body = json!({"items": [{"sku": "LAMP-01", "quantity": 1}]});
    let answer = client
        .post_order(body.to_string(), None, fresh().as_deref())
        .await?;
    answer.assert_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type");

    let answer = client
        .get("/v1/orders/0193e0c4-0000-7000-8000-000000000000")
        .await?;
    answer.assert_problem(StatusCode::NOT_FOUND, "order-not-found");
    let answer = client.get("/v1/orders/not-a-uuid").await?;
    answer.assert_problem(StatusCode::NOT_FOUND, "order-not-found");
    let answer = client.get("/v2/everything").await?;
    answer.assert_problem(StatusCode::NOT_FOUND, "not-found");
    let answer = client.get("/v1/orders").await?;
    answer.assert_problem(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed");

    // Not one of those requests left a trace.
    let checkout = system.database(Service::Checkout).await?;
    for table in [
        "orders",
        "order_items",
        "order_sagas",
        "outbox",
        "idempotency_keys",
    ] {
        let rows: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&checkout)
                .await?;
        assert_eq!(rows, 0, "{table} has {rows} rows after only bad requests");
    }
    let inventory = system.database(Service::Inventory).await?;
    let (available, reserved): (i64, i64) =
        sqlx::query_as("SELECT available, reserved FROM products WHERE sku = 'LAMP-01'")
            .fetch_one(&inventory)
            .await?;
    assert_eq!((available, reserved), (CATALOG[0].stock, 0));

    system.teardown().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_message_is_parked_and_its_partition_keeps_moving() -> anyhow::Result<()> {
    let system = System::start(Options::default()).await?;
    system.client.load_catalog(&CATALOG).await?;

    // Garbage on every partition of inventory's command topic: no envelope, no id header.
    let commands = system.topic("inventory.commands");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", system.brokers())
        .create()?;
    for partition in 0..3 {
        producer
            .send(
                FutureRecord::<(), _>::to(&commands)
                    .partition(partition)
                    .payload(b"\xde\xad\xbe\xef not an envelope".as_slice()),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
    }

    // Orders behind the garbage still go through, on every partition: orders are placed
    // until each partition has processed a command after its garbage record (an order's
    // partition follows its random id, so six orders miss one partition about a quarter of
    // the time).
    let inventory = system.database(Service::Inventory).await?;
    let mut placed = 0;
    loop {
        let mut orders = Vec::new();
        for _ in 0..3 {
            placed += 1;
            orders.push(
                system
                    .client
                    .place_order(&format!("c-{placed}"), &[("LAMP-01", 1)])
                    .await?,
            );
        }
        for id in orders {
            let order = system
                .client
                .wait_for_outcome(id, Duration::from_secs(60))
                .await?;
            assert_eq!(order["status"], "CONFIRMED", "{order}");
        }
        let moved: i64 = sqlx::query_scalar(
            r#"SELECT count(DISTINCT partition) FROM inbox
               WHERE topic = $1 AND outcome = 'processed' AND "offset" > 0"#,
        )
        .bind(&commands)
        .fetch_one(&inventory)
        .await?;
        if moved == 3 {
            break;
        }
        assert!(
            placed < 60,
            "after {placed} orders only {moved} of 3 partitions moved past their garbage"
        );
    }

    // Each garbage record is recorded as parked with its offset and the reason.
    let parked: Vec<(String, i32, i64, String)> = sqlx::query_as(
        r#"SELECT topic, partition, "offset", error FROM inbox WHERE outcome = 'parked' ORDER BY partition"#,
    )
    .fetch_all(&inventory)
    .await?;
    assert_eq!(parked.len(), 3, "{parked:?}");
    for (topic, _, offset, error) in &parked {
        assert_eq!(topic, &commands);
        assert_eq!(*offset, 0);
        assert!(error.contains("malformed"), "{error}");
    }

    // ... and is on the dead-letter topic with the error and its origin in headers.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", system.brokers())
        .set("group.id", format!("{}-dlq-reader", system.run_id))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&system.topic("inventory.dlq")])?;
    let mut seen = 0;
    while seen < 3 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await??;
        let headers: BTreeMap<String, String> = message
            .headers()
            .map(|h| {
                h.iter()
                    .filter_map(|h| {
                        Some((h.key.to_owned(), String::from_utf8(h.value?.to_vec()).ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            headers.get("dlq.original.topic"),
            Some(&commands),
            "{headers:?}"
        );
        assert_eq!(
            headers.get("dlq.original.offset").map(String::as_str),
            Some("0")
        );
        assert!(
            headers
                .get("dlq.error")
                .is_some_and(|e| e.contains("malformed")),
            "{headers:?}"
        );
        assert_eq!(
            message.payload(),
            Some(b"\xde\xad\xbe\xef not an envelope".as_slice())
        );
        seen += 1;
    }
    drop(consumer);

    system.wait_until_settled(Duration::from_secs(60)).await?;
    system
        .check_invariants(
            &CATALOG
                .iter()
                .map(|p| (p.sku.to_owned(), p.stock))
                .collect(),
        )
        .await?;
    system.teardown().await
}
