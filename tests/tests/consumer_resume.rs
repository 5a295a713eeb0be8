//! A consumer that stops after committing part of a multi-record batch resumes exactly where
//! it stopped: every record is processed once, none is skipped, nothing stalls.
//!
//! This is the broker behaviour the inbox relies on, checked against whatever broker
//! `FAULTLINE_KAFKA_BROKERS` names (the local tansu by default). tansu 0.6.0's memory engine
//! fails it: the second consumer never receives anything (docs/adr/0002).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use faultline_outbox::consumer::{
    self, ConsumerObserver, ConsumerSettings, Handler, HandlerError, Incoming,
};
use faultline_outbox::kafka::{TopicSpec, consumer_config, ensure_topics, producer_config};
use faultline_testkit::{TestDatabase, kafka_brokers};
use futures_util::future::join_all;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

/// Records each message with the run that processed it, and asks the loop to stop after
/// `stop_after` messages.
struct Recorder {
    run: i32,
    stop_after: usize,
    handled: Arc<AtomicUsize>,
    shutdown: CancellationToken,
}

impl Handler for Recorder {
    type Prepared = ();

    async fn prepare(&self, _: &Incoming) -> Result<(), HandlerError> {
        Ok(())
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        message: &Incoming,
        (): (),
    ) -> Result<(), HandlerError> {
        sqlx::query(r#"INSERT INTO seen (payload, run, "offset") VALUES ($1, $2, $3)"#)
            .bind(String::from_utf8_lossy(&message.payload).into_owned())
            .bind(self.run)
            .bind(message.offset)
            .execute(tx)
            .await?;
        if self.handled.fetch_add(1, Ordering::SeqCst) + 1 >= self.stop_after {
            self.shutdown.cancel();
        }
        Ok(())
    }
}

async fn consume(
    brokers: &str,
    group: &str,
    topic: &str,
    pool: &PgPool,
    run: i32,
    stop_after: usize,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let recorder = Recorder {
        run,
        stop_after,
        handled: Arc::default(),
        shutdown: shutdown.clone(),
    };
    let settings = ConsumerSettings::new(group, vec![topic.to_owned()], format!("{topic}.dlq"));
    let loop_ = consumer::run(
        consumer_config(brokers, group, "resume-test"),
        ConsumerObserver::default(),
        pool.clone(),
        recorder,
        settings,
        shutdown.clone(),
    );
    match tokio::time::timeout(Duration::from_secs(45), loop_).await {
        Ok(result) => result.map(|_stats| ()).map_err(Into::into),
        Err(_) => anyhow::bail!(
            "run {run} did not get its {stop_after} messages within 45 s: the consumer stalled"
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_restarted_after_a_partial_commit_resumes_mid_batch() -> anyhow::Result<()> {
    let brokers = kafka_brokers();
    let db = TestDatabase::create("resume").await?;
    let id = db.name.clone();
    let topic = format!("{id}.records");
    let group = format!("{id}.group");
    let pool = db.pool.clone();
    faultline_outbox::migrate(&pool).await?;
    sqlx::raw_sql(r#"CREATE TABLE seen (payload text, run int, "offset" bigint)"#)
        .execute(&pool)
        .await?;
    ensure_topics(
        &brokers,
        &[TopicSpec {
            name: topic.clone(),
            partitions: 1,
            replication_factor: 1,
        }],
    )
    .await?;

    // Six records handed to the producer at once with a long linger travel as one batch.
    let mut config = producer_config(&brokers, "resume-test");
    config.set("linger.ms", "200");
    let producer: FutureProducer = config.create()?;
    let deliveries = (0..6).map(|i| {
        let event_id = uuid::Uuid::now_v7().to_string();
        let payload = format!("record-{i}");
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            let headers = OwnedHeaders::new().insert(Header {
                key: "id",
                value: Some(event_id.as_str()),
            });
            producer
                .send(
                    FutureRecord::to(&topic)
                        .key("one-key")
                        .payload(&payload)
                        .headers(headers),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
        }
    });
    let offsets: Vec<i64> = join_all(deliveries)
        .await
        .into_iter()
        .map(|d| d.map(|d| d.offset))
        .collect::<Result<_, _>>()?;
    assert_eq!(offsets, vec![0, 1, 2, 3, 4, 5]);

    // First run: two records, then a clean stop that commits offset 2, inside the batch.
    consume(&brokers, &group, &topic, &pool, 1, 2).await?;
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &group)
        .create()?;
    let mut wanted = TopicPartitionList::new();
    wanted.add_partition(&topic, 0);
    let committed = reader.committed_offsets(wanted, Duration::from_secs(10))?;
    let offset = committed.find_partition(&topic, 0).map(|p| p.offset());
    assert_eq!(
        offset,
        Some(Offset::Offset(2)),
        "the first run committed part of the batch"
    );

    // Second run: must resume at offset 2 and see the other four.
    consume(&brokers, &group, &topic, &pool, 2, 4).await?;

    let seen: Vec<(String, i32, i64)> =
        sqlx::query_as(r#"SELECT payload, run, "offset" FROM seen ORDER BY "offset""#)
            .fetch_all(&pool)
            .await?;
    let expected: Vec<(String, i32, i64)> = (0..6)
        .map(|i| {
            (
                format!("record-{i}"),
                if i < 2 { 1 } else { 2 },
                i64::from(i),
            )
        })
        .collect();
    assert_eq!(
        seen, expected,
        "each record exactly once, in order, split across the runs"
    );

    db.drop().await?;
    Ok(())
}
