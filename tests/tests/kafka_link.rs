//! The Kafka-aware forwarder (`faultline_e2e::kafka_link`) against a real tansu: a client
//! bootstrapped at its link's fault proxy is told to come back to that proxy, never to the
//! broker, so a freeze of the proxy stops that client and no other. Without the rewrite the
//! client learns the broker's own port from its first metadata answer and goes around the
//! proxy: the first assertion fails, and the freeze stops nothing.

use std::net::SocketAddr;
use std::time::Duration;

use faultline_e2e::broker::Broker;
use faultline_e2e::kafka_link::BrokerLink;
use faultline_outbox::kafka::{TopicSpec, consumer_config, ensure_topics, producer_config};
use faultline_testkit::unique;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

const PATIENCE: Duration = Duration::from_secs(20);
/// Longer than a produce round trip on loopback by far, shorter than any client timeout.
const FROZEN: Duration = Duration::from_secs(3);

async fn deliver(producer: &FutureProducer, topic: &str, payload: &str) -> anyhow::Result<()> {
    let record = FutureRecord::to(topic).key("k").payload(payload);
    producer
        .send(record, Timeout::After(PATIENCE))
        .await
        .map_err(|(error, _)| anyhow::anyhow!("{payload}: {error}"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn each_client_reaches_the_broker_only_through_its_own_link() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(unique("kafka_link"));
    let broker = Broker::start(dir.clone()).await?;
    let target: SocketAddr = broker.address.parse()?;
    let (a, b) = (
        BrokerLink::start(target).await?,
        BrokerLink::start(target).await?,
    );
    let topic = unique("kafka_link");
    ensure_topics(
        &broker.address,
        &[TopicSpec {
            name: topic.clone(),
            partitions: 1,
            replication_factor: 1,
        }],
    )
    .await?;

    let producer_a: FutureProducer = producer_config(&a.address(), "link-a").create()?;
    let metadata = {
        let (producer, topic) = (producer_a.clone(), topic.clone());
        tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(Some(&topic), PATIENCE)
        })
        .await??
    };
    let advertised: Vec<i32> = metadata.brokers().iter().map(|b| b.port()).collect();
    assert_eq!(
        advertised,
        vec![i32::from(a.proxy.port)],
        "the client is told to use its link's proxy, not the broker's port {}",
        target.port()
    );

    deliver(&producer_a, &topic, "through a").await?;
    // A group member: its coordinator's address comes from FindCoordinator.
    let consumer_a: StreamConsumer =
        consumer_config(&a.address(), &unique("kafka_link"), "link-a").create()?;
    consumer_a.subscribe(&[&topic])?;
    let message = tokio::time::timeout(PATIENCE, consumer_a.recv()).await??;
    assert_eq!(message.payload(), Some(&b"through a"[..]));
    let rewritten = a.forwarder.rewritten();
    assert!(
        rewritten.metadata > 0 && rewritten.coordinator > 0,
        "the consumer's coordinator came through the link too: {rewritten:?}"
    );
    drop(message);
    drop(consumer_a);

    let producer_b: FutureProducer = producer_config(&b.address(), "link-b").create()?;
    a.proxy.freeze();
    let mut stuck = producer_a
        .send_result(
            FutureRecord::to(&topic)
                .key("k")
                .payload("during a's freeze"),
        )
        .map_err(|(error, _)| anyhow::anyhow!("queueing on a: {error}"))?;
    deliver(&producer_b, &topic, "through b, while a is frozen").await?;
    assert!(
        tokio::time::timeout(FROZEN, &mut stuck).await.is_err(),
        "a's produce went around its frozen link"
    );
    a.proxy.restore();
    let delivered = tokio::time::timeout(PATIENCE, stuck).await??;
    delivered.map_err(|(error, _)| anyhow::anyhow!("a after the thaw: {error}"))?;

    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
