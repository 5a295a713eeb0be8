//! Effectively-once, shown by delivering everything again: every consumer group is rewound
//! to the start of its topics while orders keep coming, and one service re-reads its topic
//! under a fresh group id. No effect may happen twice (stock, payments, ledger, order
//! states: `System::check_invariants`), and each consumer's duplicate counter must account
//! for at least every record it had already finished.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use faultline_e2e::{Client, Options, ProductSpec, Service, Signal, System};
use faultline_proto::contract::topics;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use reqwest::StatusCode;
use uuid::Uuid;

const CATALOG: [ProductSpec; 1] = [ProductSpec {
    sku: "LAMP-01",
    name: "Desk lamp",
    price_cents: 2_490,
    stock: 100,
}];

fn loaded() -> BTreeMap<String, i64> {
    CATALOG
        .iter()
        .map(|p| (p.sku.to_owned(), p.stock))
        .collect()
}

/// The topics each service's consumer reads.
fn consumed(service: Service) -> &'static [&'static str] {
    match service {
        Service::Inventory => &[topics::INVENTORY_COMMANDS],
        Service::Payments => &[topics::PAYMENTS_COMMANDS],
        Service::Checkout => &[
            topics::INVENTORY_EVENTS,
            topics::PAYMENTS_EVENTS,
            topics::CATALOG_EVENTS,
        ],
    }
}

/// Every partition of `topics`, at `offset`.
fn partitions(
    consumer: &BaseConsumer,
    topics: &[String],
    offset: Offset,
) -> anyhow::Result<TopicPartitionList> {
    let mut list = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let found = metadata.topics().first().context("no such topic")?;
        for partition in found.partitions() {
            list.add_partition_offset(topic, partition.id(), offset)?;
        }
    }
    Ok(list)
}

/// Commits offset 0 for every partition of `topics` in `group` (whose members are stopped),
/// as `kafka-consumer-groups --reset-offsets --to-earliest` does; returns how many records
/// the group had committed, i.e. how many it will now receive a second time.
fn rewind(brokers: &str, group: &str, topics: &[String]) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let committed = consumer.committed_offsets(
        partitions(&consumer, topics, Offset::Invalid)?,
        Duration::from_secs(10),
    )?;
    let finished: i64 = committed
        .elements()
        .iter()
        .filter_map(|entry| match entry.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        })
        .sum();
    consumer.commit(
        &partitions(&consumer, topics, Offset::Offset(0))?,
        CommitMode::Sync,
    )?;
    let after = consumer.committed_offsets(
        partitions(&consumer, topics, Offset::Invalid)?,
        Duration::from_secs(10),
    )?;
    ensure!(
        after
            .elements()
            .iter()
            .all(|entry| entry.offset() == Offset::Offset(0)),
        "the group was not rewound: {after:?}"
    );
    Ok(finished)
}

/// Places an order, retrying with the same key while checkout is away or refusing.
async fn place_patiently(client: &Client, customer: &str) -> anyhow::Result<Uuid> {
    let client = client.as_customer(customer);
    let key = Uuid::new_v4().to_string();
    let body = Client::order_body(&[("LAMP-01", 1)]).to_string();
    for _ in 0..150 {
        if let Ok(answer) = client
            .post_order(body.clone(), Some("application/json"), Some(&key))
            .await
            && answer.status == StatusCode::ACCEPTED
        {
            return answer.body["order_id"]
                .as_str()
                .context("202 without order_id")?
                .parse()
                .context("order_id is not a uuid");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("checkout never took the order")
}

async fn duplicates(system: &System, service: Service) -> anyhow::Result<f64> {
    Ok(system
        .metric(service, "messaging_consumer_duplicates_total")
        .await?
        .unwrap_or(0.0))
}

async fn statuses(system: &System, orders: &[Uuid]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for id in orders {
        let order = system
            .client
            .wait_for_outcome(*id, Duration::from_secs(120))
            .await?;
        out.push(order["status"].as_str().unwrap_or_default().to_owned());
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn rewinding_every_group_while_orders_flow_applies_nothing_twice() -> anyhow::Result<()> {
    let mut system = System::start(Options::default()).await?;
    system.client.load_catalog(&CATALOG).await?;
    let mut before = Vec::new();
    for i in 0..6 {
        before.push(place_patiently(&system.client, &format!("early-{i}")).await?);
    }
    let decided = statuses(&system, &before).await?;
    ensure!(decided.iter().all(|s| s == "CONFIRMED"), "{decided:?}");
    system.wait_until_settled(Duration::from_secs(60)).await?;

    // Orders keep coming while each service in turn stops, has its group rewound to the
    // start of its topics, and starts again.
    let client = system.client.clone();
    let flowing = tokio::spawn(async move {
        let mut placed = Vec::new();
        for i in 0..6 {
            placed.push(place_patiently(&client, &format!("late-{i}")).await?);
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        anyhow::Ok(placed)
    });
    let mut replayed = BTreeMap::new();
    for service in [Service::Inventory, Service::Payments, Service::Checkout] {
        system.stop(service, Signal::Term).await?;
        let group = system.topic(service.name());
        let topics: Vec<String> = consumed(service).iter().map(|t| system.topic(t)).collect();
        let brokers = system.brokers().to_owned();
        let finished =
            tokio::task::spawn_blocking(move || rewind(&brokers, &group, &topics)).await??;
        ensure!(finished > 0, "{} had finished nothing", service.name());
        replayed.insert(service, finished);
        system.restart(service).await?;
    }
    let after = flowing.await??;

    // Every order is decided once and nothing changed for the early ones.
    ensure!(
        statuses(&system, &before).await? == decided,
        "an early order changed"
    );
    let late = statuses(&system, &after).await?;
    ensure!(late.iter().all(|s| s == "CONFIRMED"), "{late:?}");
    system.wait_until_settled(Duration::from_secs(120)).await?;
    system.check_invariants(&loaded()).await?;
    // Each restarted consumer met again, and skipped, every record it had finished.
    for (service, finished) in replayed {
        let skipped = duplicates(&system, service).await?;
        ensure!(
            skipped >= finished as f64,
            "{} skipped {skipped} duplicates after a rewind over {finished} finished records",
            service.name()
        );
    }
    system.teardown().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_group_replays_a_topic_into_the_same_inbox_and_changes_nothing()
-> anyhow::Result<()> {
    let mut system = System::start(Options::default()).await?;
    system.client.load_catalog(&CATALOG).await?;
    let mut orders = Vec::new();
    for i in 0..5 {
        orders.push(place_patiently(&system.client, &format!("c-{i}")).await?);
    }
    let decided = statuses(&system, &orders).await?;
    system.wait_until_settled(Duration::from_secs(60)).await?;

    // Inventory reads its command topic again from the start under a new group id; its
    // inbox, keyed by the service and not by the group, has every record already.
    system.stop(Service::Inventory, Signal::Term).await?;
    let group = system.topic("inventory-replay");
    system.set_env(
        Service::Inventory,
        "INVENTORY_KAFKA__CONSUMER_GROUP",
        &group,
    )?;
    system.restart(Service::Inventory).await?;
    let commands = {
        let brokers = system.brokers().to_owned();
        let topic = system.topic(topics::INVENTORY_COMMANDS);
        tokio::task::spawn_blocking(move || -> anyhow::Result<i64> {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .create()?;
            let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
            let mut total = 0;
            for partition in metadata.topics().first().context("no topic")?.partitions() {
                let (low, high) =
                    consumer.fetch_watermarks(&topic, partition.id(), Duration::from_secs(10))?;
                total += high - low;
            }
            Ok(total)
        })
        .await??
    };
    ensure!(commands > 0, "inventory had no commands");
    let started = std::time::Instant::now();
    while duplicates(&system, Service::Inventory).await? < commands as f64 {
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "inventory skipped {} of {commands} replayed commands",
            duplicates(&system, Service::Inventory).await?
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    ensure!(
        duplicates(&system, Service::Inventory).await? == commands as f64,
        "every replayed command is skipped once, and nothing else"
    );

    // Nothing changed, and the new group carries on with new work.
    ensure!(
        statuses(&system, &orders).await? == decided,
        "an order changed"
    );
    let next = place_patiently(&system.client, "after-replay").await?;
    ensure!(
        statuses(&system, &[next]).await? == ["CONFIRMED"],
        "the next order failed"
    );
    system.wait_until_settled(Duration::from_secs(60)).await?;
    system.check_invariants(&loaded()).await?;
    system.teardown().await
}
