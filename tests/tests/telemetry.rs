//! Telemetry end to end: one trace per order across all three services and both Kafka hops,
//! metrics with sane values, JSON logs carrying the trace, probes that follow the
//! dependencies, and a SIGTERM under load that loses no accepted order.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use faultline_e2e::broker::Broker;
use faultline_e2e::collector::{CollectedSpan, Collector};
use faultline_e2e::{Caller, Client, Options, ProductSpec, Service, Signal, System, sample};
use reqwest::StatusCode;
use uuid::Uuid;

const CATALOG: [ProductSpec; 2] = [
    ProductSpec {
        sku: "LAMP-01",
        name: "Desk lamp",
        price_cents: 2_490,
        stock: 100_000,
    },
    ProductSpec {
        sku: "DESK-03",
        name: "Standing desk",
        price_cents: 64_900,
        stock: 10,
    },
];

fn loaded() -> BTreeMap<String, i64> {
    CATALOG
        .iter()
        .map(|p| (p.sku.to_owned(), p.stock))
        .collect()
}

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;
const ERROR: i32 = 2;

/// The trace of `order`: the trace id its saga spans share, and every span in it.
fn trace_of(spans: &[CollectedSpan], order: Uuid) -> Option<(String, Vec<CollectedSpan>)> {
    let order = order.to_string();
    let ids: BTreeSet<&str> = spans
        .iter()
        .filter(|s| s.attribute("order.id") == Some(order.as_str()))
        .map(|s| s.trace_id.as_str())
        .collect();
    let [trace_id] = ids.into_iter().collect::<Vec<_>>()[..] else {
        return None;
    };
    let trace: Vec<CollectedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == trace_id)
        .cloned()
        .collect();
    Some((trace_id.to_owned(), trace))
}

/// True when some span of `child_service` with `child_kind` is the child of a span of
/// `parent_service` with `parent_kind`, within `trace`.
fn linked(trace: &[CollectedSpan], parent: (&str, i32), child: (&str, i32)) -> bool {
    trace.iter().any(|c| {
        c.service == child.0
            && c.kind == child.1
            && trace.iter().any(|p| {
                p.span_id == c.parent_span_id && p.service == parent.0 && p.kind == parent.1
            })
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_follows_each_order_through_http_the_outbox_kafka_and_grpc() -> anyhow::Result<()>
{
    let collector = Collector::start().await?;
    let system = System::start(Options {
        otlp_endpoint: Some(collector.endpoint.clone()),
        ..Options::default()
    })
    .await?;
    system.client.load_catalog(&CATALOG).await?;
    let confirmed = system
        .client
        .place_order("alice", &[("LAMP-01", 1)])
        .await?;
    let declined = system.client.place_order("bob", &[("DESK-03", 1)]).await?;
    // A caller's garbage trace context is ignored, never an error: the request starts a trace.
    let garbage = reqwest::Client::new()
        .post(format!("{}/v1/orders", system.client.checkout_url()))
        .header("content-type", "application/json")
        .header("idempotency-key", Uuid::new_v4().to_string())
        .header("traceparent", "00-not-a-trace-at-all-01")
        .bearer_auth(
            system
                .credentials
                .token(&Caller::Customer("carol".into()))?,
        )
        .body(Client::order_body(&[("LAMP-01", 1)]).to_string())
        .send()
        .await?;
    assert_eq!(garbage.status(), StatusCode::ACCEPTED);
    system.wait_until_settled(Duration::from_secs(60)).await?;

    // Spans arrive in batches; wait until both sagas' last steps are in: four saga events
    // for a confirmed order (reserved, authorized, committed, captured), three for a
    // declined one (reserved, declined, released).
    let started = Instant::now();
    let complete = |spans: &[CollectedSpan], order: Uuid, steps: usize| {
        trace_of(spans, order).is_some_and(|(_, trace)| {
            let services: BTreeSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
            services.len() == 3 && trace.iter().filter(|s| s.name == "saga apply").count() >= steps
        })
    };
    let spans = loop {
        let spans = collector.spans();
        if complete(&spans, confirmed, 4) && complete(&spans, declined, 3) {
            break spans;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "traces incomplete after 30 s; got {} spans",
            spans.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let (trace_id, trace) = trace_of(&spans, confirmed).expect("one trace for the order");
    // It starts at the HTTP request...
    let root = trace
        .iter()
        .find(|s| s.name == "POST /v1/orders")
        .expect("the request's server span is in the trace");
    assert_eq!((root.service.as_str(), root.kind), ("checkout", SERVER));
    assert!(
        root.parent_span_id.is_empty(),
        "the request starts the trace"
    );
    assert_eq!(root.attribute("http.response.status_code"), Some("202"));
    // ... crosses gRPC ...
    assert!(
        linked(&trace, ("checkout", CLIENT), ("inventory", SERVER)),
        "catalog call"
    );
    // ... and every Kafka hop, each consumer a child of the producer that sent to it.
    assert!(
        linked(&trace, ("checkout", PRODUCER), ("inventory", CONSUMER)),
        "ReserveStock"
    );
    assert!(
        linked(&trace, ("inventory", PRODUCER), ("checkout", CONSUMER)),
        "StockReserved"
    );
    assert!(
        linked(&trace, ("checkout", PRODUCER), ("payments", CONSUMER)),
        "AuthorizePayment"
    );
    assert!(
        linked(&trace, ("payments", PRODUCER), ("checkout", CONSUMER)),
        "PaymentAuthorized"
    );
    assert!(
        trace.iter().all(|s| s.status_code != ERROR),
        "a confirmed order has no failed step"
    );

    // The cancelled order's trace marks the step that cancelled it.
    let (declined_trace_id, declined_trace) = trace_of(&spans, declined).expect("its own trace");
    assert_ne!(declined_trace_id, trace_id);
    let failed: Vec<&CollectedSpan> = declined_trace
        .iter()
        .filter(|s| s.status_code == ERROR)
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].name, "saga apply");
    assert!(
        failed[0].status_message.contains("payment_declined"),
        "{:?}",
        failed[0]
    );

    // The log line of the placed order carries the same trace id.
    let log = system.log(Service::Checkout)?;
    let placed = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["message"] == "order placed" && line["order_id"] == confirmed.to_string())
        .expect("an 'order placed' JSON line");
    assert_eq!(placed["trace_id"], trace_id);
    assert_eq!(placed["service"], "checkout");
    assert_eq!(placed["level"], "INFO");
    assert!(placed["span_id"].as_str().is_some_and(|s| s.len() == 16));

    system.teardown().await
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_scraped_with_sane_values_after_an_order() -> anyhow::Result<()> {
    let system = System::start(Options::default()).await?;
    system.client.load_catalog(&CATALOG).await?;
    let order = system
        .client
        .place_order("alice", &[("LAMP-01", 2)])
        .await?;
    system
        .client
        .wait_for_outcome(order, Duration::from_secs(60))
        .await?;
    system.wait_until_settled(Duration::from_secs(60)).await?;
    // StockReserved, PaymentAuthorized, StockCommitted, PaymentCaptured, and one
    // ProductChanged per product loaded into the catalog.
    let processed = 4.0 + CATALOG.len() as f64;
    // The backlog sampler and the consumer statistics run on their own clocks, and the
    // catalog's event travels on its own topic, unrelated to the saga that settled: wait
    // until all have reported, rather than for a fixed time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (status, checkout) = loop {
        let (status, text) = system.admin(Service::Checkout, "/metrics").await?;
        let sampled = sample(&text, "outbox_pending_rows") == Some(0.0)
            && sample(&text, "outbox_oldest_pending_age_seconds") == Some(0.0)
            && sample(&text, "messaging_consumer_processed_total") == Some(processed)
            && text.contains(r#"kafka_consumer_lag{topic=""#);
        if sampled || tokio::time::Instant::now() >= deadline {
            break (status, text);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status, 200);
    let count = |text: &str, series: &str| {
        sample(text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"))
    };
    assert_eq!(
        count(
            &checkout,
            r#"http_server_request_duration_seconds_count{method="POST",route="/v1/orders",status="202"}"#
        ),
        1.0
    );
    assert!(
        count(
            &checkout,
            r#"http_server_request_duration_seconds_sum{method="POST",route="/v1/orders",status="202"}"#
        ) > 0.0
    );
    assert_eq!(
        count(
            &checkout,
            r#"rpc_client_duration_seconds_count{service="faultline.inventory.v1.InventoryService",method="GetProducts",code="OK"}"#
        ),
        1.0
    );
    assert_eq!(
        count(
            &checkout,
            r#"saga_outcomes_total{outcome="confirmed",code=""}"#
        ),
        1.0
    );
    assert_eq!(
        count(
            &checkout,
            r#"saga_decision_duration_seconds_count{outcome="confirmed",code=""}"#
        ),
        1.0
    );
    assert_eq!(
        count(&checkout, "messaging_consumer_processed_total"),
        processed
    );
    assert_eq!(count(&checkout, "messaging_consumer_parked_total"), 0.0);
    assert_eq!(count(&checkout, "outbox_pending_rows"), 0.0);
    assert_eq!(count(&checkout, "outbox_oldest_pending_age_seconds"), 0.0);
    assert!(
        checkout.contains(r#"kafka_consumer_lag{topic=""#),
        "lag per assigned partition:\n{checkout}"
    );

    let (_, inventory) = system.admin(Service::Inventory, "/metrics").await?;
    assert_eq!(
        count(
            &inventory,
            r#"rpc_server_duration_seconds_count{service="faultline.inventory.v1.InventoryService",method="GetProducts",code="OK"}"#
        ),
        1.0
    );
    // ReserveStock and CommitStock.
    assert_eq!(count(&inventory, "messaging_consumer_processed_total"), 2.0);
    system.teardown().await
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_the_database_and_the_broker_and_recovers() -> anyhow::Result<()> {
    let run = format!("broker-{}", Uuid::new_v4().simple());
    let dir = std::env::temp_dir().join(run);
    let mut broker = Broker::start(dir.clone()).await?;
    let system = System::start(Options {
        brokers: Some(broker.address.clone()),
        database_proxy: Some(Service::Inventory),
        ..Options::default()
    })
    .await?;
    system.client.load_catalog(&CATALOG).await?;

    async fn wait_ready(system: &System, service: Service, ready: bool) -> anyhow::Result<String> {
        let started = Instant::now();
        loop {
            let (status, body) = system.admin(service, "/ready").await?;
            if (status == 200) == ready {
                return Ok(body);
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "{} readiness stayed {status} for 30 s: {body}",
                service.name()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // Postgres goes away for inventory only; its liveness is unaffected.
    let proxy = system.database_proxy.as_ref().expect("proxy asked for");
    proxy.cut();
    let body = wait_ready(&system, Service::Inventory, false).await?;
    assert!(body.contains("database"), "{body}");
    assert_eq!(system.admin(Service::Inventory, "/healthz").await?.0, 200);
    assert_eq!(system.admin(Service::Checkout, "/ready").await?.0, 200);
    proxy.restore();
    wait_ready(&system, Service::Inventory, true).await?;

    // The broker goes away for everyone, and comes back.
    broker.kill().await?;
    for service in Service::ALL {
        let body = wait_ready(&system, service, false).await?;
        assert!(body.contains("kafka"), "{body}");
    }
    broker.resume().await?;
    for service in Service::ALL {
        wait_ready(&system, service, true).await?;
    }

    // And the system still does its job.
    let order = system
        .client
        .place_order("alice", &[("LAMP-01", 1)])
        .await?;
    let outcome = system
        .client
        .wait_for_outcome(order, Duration::from_secs(60))
        .await?;
    assert_eq!(outcome["status"], "CONFIRMED");
    system.wait_until_settled(Duration::from_secs(60)).await?;
    system.check_invariants(&loaded()).await?;
    system.teardown().await?;
    broker.kill().await?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_loses_no_accepted_order() -> anyhow::Result<()> {
    let mut system = System::start(Options::default()).await?;
    system.client.load_catalog(&CATALOG).await?;

    // Five clients place orders as fast as they can until checkout stops answering.
    let mut clients = Vec::new();
    for c in 0..5 {
        let client = system.client.as_customer(&format!("load-{c}"));
        clients.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            let body = Client::order_body(&[("LAMP-01", 1)]);
            loop {
                match client.post_order_json(&body).await {
                    Ok(answer) if answer.status == StatusCode::ACCEPTED => {
                        let id = answer.body["order_id"].as_str().unwrap_or_default();
                        accepted.push(Uuid::parse_str(id).expect("202 carries an order id"));
                    }
                    // The edge's rate limit and shedding: not accepted; back off a little.
                    Ok(answer)
                        if answer.status == StatusCode::TOO_MANY_REQUESTS
                            || answer.status == StatusCode::SERVICE_UNAVAILABLE =>
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Ok(answer) => panic!(
                        "unexpected answer under load: {} {}",
                        answer.status, answer.body
                    ),
                    // Connection refused or reset: checkout has stopped accepting.
                    Err(_) => return accepted,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    system.stop(Service::Checkout, Signal::Term).await?;
    let mut accepted = Vec::new();
    for client in clients {
        accepted.extend(client.await?);
    }
    assert!(
        accepted.len() >= 5,
        "the load placed only {} orders",
        accepted.len()
    );

    // Whatever checkout accepted before it stopped is there after a restart, and finishes.
    system.restart(Service::Checkout).await?;
    for id in &accepted {
        let order = system
            .client
            .wait_for_outcome(*id, Duration::from_secs(120))
            .await?;
        assert_eq!(order["status"], "CONFIRMED", "{order}");
    }
    system.wait_until_settled(Duration::from_secs(120)).await?;
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&system.database(Service::Checkout).await?)
        .await?;
    assert_eq!(
        orders as usize,
        accepted.len(),
        "no order exists that was not answered 202"
    );
    system.check_invariants(&loaded()).await?;
    system.teardown().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_collector_never_holds_up_requests() -> anyhow::Result<()> {
    // A collector that accepts connections and never answers: the worst case for an exporter.
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", black_hole.local_addr()?);
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = black_hole.accept().await {
            held.push(socket);
        }
    });
    let system = System::start(Options {
        otlp_endpoint: Some(endpoint),
        ..Options::default()
    })
    .await?;
    system.client.load_catalog(&CATALOG).await?;

    // The exporter's own timeout is 10 s; a request that waited on it would show.
    for i in 0..20 {
        let started = Instant::now();
        let order = system
            .client
            .place_order(&format!("c-{i}"), &[("LAMP-01", 1)])
            .await?;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "placing order {order} waited {:?} on the exporter",
            started.elapsed()
        );
    }
    system.wait_until_settled(Duration::from_secs(60)).await?;
    system.check_invariants(&loaded()).await?;
    system.teardown().await
}
