//! A broker outage longer than a step's whole budget (attempts × step timeout) delays orders
//! and cancels none: a saga's deadline does not run while its command is still waiting in
//! the outbox, because the participant was never asked. And a relay round that the outage
//! cuts off midway waits it out instead of timing its messages out (which is how a
//! producer leaves gaps and reorders a key).

use std::collections::BTreeMap;
use std::time::Duration;

use faultline_e2e::broker::Broker;
use faultline_e2e::{Options, ProductSpec, Service, System};
use faultline_outbox::kafka::{TopicSpec, ensure_topics, producer_config};
use faultline_outbox::{OutboxMessage, Relay, RelayConfig, backlog, enqueue};
use faultline_testkit::TestDatabase;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use uuid::Uuid;

const CATALOG: [ProductSpec; 1] = [ProductSpec {
    sku: "LAMP-01",
    name: "Desk lamp",
    price_cents: 2_490,
    stock: 20,
}];

const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// Sends of a step before the order is cancelled (checkout's default).
const ATTEMPTS: u32 = 3;

#[tokio::test(flavor = "multi_thread")]
async fn orders_placed_while_the_broker_is_down_outlive_their_step_budget_and_confirm()
-> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("broker-{}", Uuid::new_v4().simple()));
    let mut broker = Broker::start(dir.clone()).await?;
    let system = System::start(Options {
        brokers: Some(broker.address.clone()),
        saga_step_timeout: STEP_TIMEOUT,
        // This test is about deadlines, not about refusing orders while the outbox waits.
        extra_env: vec![(
            Service::Checkout,
            "CHECKOUT_ADMISSION__MAX_OUTBOX_AGE_MS".to_owned(),
            "600000".to_owned(),
        )],
        ..Options::default()
    })
    .await?;
    system.client.load_catalog(&CATALOG).await?;

    broker.kill().await?;
    let mut orders = Vec::new();
    for i in 0..3 {
        orders.push(
            system
                .client
                .place_order(&format!("customer-{i}"), &[("LAMP-01", 1)])
                .await?,
        );
    }
    // Longer than the whole budget of the first step; shorter than the consumers' 30 s
    // session, so the groups survive on the broker.
    let budget = STEP_TIMEOUT * ATTEMPTS;
    tokio::time::sleep(budget + Duration::from_secs(5)).await;
    let checkout = system.database(Service::Checkout).await?;
    let cancelled: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE status <> 'PENDING'")
            .fetch_one(&checkout)
            .await?;
    assert_eq!(cancelled, 0, "no order is decided while nobody was asked");
    let deferred: i64 = sqlx::query_scalar("SELECT count(*) FROM order_sagas WHERE attempts = 1")
        .fetch_one(&checkout)
        .await?;
    assert_eq!(
        deferred, 3,
        "no attempt is counted for a command never sent"
    );

    broker.resume().await?;
    for id in orders {
        let order = system
            .client
            .wait_for_outcome(id, Duration::from_secs(120))
            .await?;
        assert_eq!(order["status"], "CONFIRMED", "{order}");
    }
    system.wait_until_settled(Duration::from_secs(120)).await?;
    let loaded: BTreeMap<String, i64> = CATALOG
        .iter()
        .map(|p| (p.sku.to_owned(), p.stock))
        .collect();
    system.check_invariants(&loaded).await?;
    system.teardown().await?;
    broker.kill().await?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_round_cut_off_by_the_broker_waits_it_out_and_keeps_each_keys_order()
-> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("broker-{}", Uuid::new_v4().simple()));
    let mut broker = Broker::start(dir.clone()).await?;
    let topic = "relay.outage".to_owned();
    ensure_topics(
        &broker.address,
        &[TopicSpec {
            name: topic.clone(),
            partitions: 2,
            replication_factor: 1,
        }],
    )
    .await?;
    let db = TestDatabase::create("relay_outage").await?;
    faultline_outbox::migrate(&db.pool).await?;
    const KEYS: usize = 4;
    const PER_KEY: usize = 10;
    for seq in 0..PER_KEY {
        for key in 0..KEYS {
            let mut tx = db.pool.begin().await?;
            let message = OutboxMessage::new(
                &topic,
                "test",
                format!("k{key}"),
                "Step",
                format!("{key}:{seq}").into_bytes(),
            );
            enqueue(&mut tx, &message).await?;
            tx.commit().await?;
        }
    }

    let producer: FutureProducer = producer_config(&broker.address, "outage-relay").create()?;
    let mut relay = Relay::new(db.pool.clone(), producer, RelayConfig::default());
    relay.rebalance().await?;
    // The broker goes away as the round starts and stays away longer than the 30 s that
    // librdkafka's message timeout used to allow.
    broker.kill().await?;
    let round = tokio::spawn(async move {
        let outcome = relay.drain().await;
        (relay, outcome)
    });
    tokio::time::sleep(Duration::from_secs(35)).await;
    assert!(!round.is_finished(), "the round waits for the broker");
    broker.resume().await?;
    let (_relay, outcome) = round.await?;
    outcome.map_err(|error| anyhow::anyhow!("the round failed instead of waiting: {error}"))?;
    assert_eq!(backlog(&db.pool).await?.pending, 0);

    // Every record, each key's in write order (first copies: a retry after the broker came
    // back may repeat one, which consumers drop through their inbox).
    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .set("group.id", "outage-reader")
        .set("auto.offset.reset", "earliest")
        .create()?;
    reader.subscribe(&[&topic])?;
    let mut next = [0usize; KEYS];
    let mut seen = std::collections::HashSet::new();
    while let Ok(message) = tokio::time::timeout(Duration::from_secs(10), reader.recv()).await {
        let payload = String::from_utf8(message?.payload().unwrap_or_default().to_vec())?;
        if !seen.insert(payload.clone()) {
            continue;
        }
        let (key, seq) = payload.split_once(':').unwrap_or_default();
        let (key, seq): (usize, usize) = (key.parse()?, seq.parse()?);
        assert_eq!(
            seq, next[key],
            "key {key}: got {seq} where {} was due",
            next[key]
        );
        next[key] += 1;
    }
    assert_eq!(next, [PER_KEY; KEYS], "every record arrived");

    db.drop().await?;
    broker.kill().await?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
