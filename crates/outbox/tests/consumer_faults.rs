//! The consumer loop when its own side fails, against a real broker and Postgres: a member
//! that gets no work while work waits, and a member whose handler hangs, are replaced by new
//! group members; when that does not help they fail readiness and then liveness; when it
//! does, they finish every record. A handler that panics on one record parks that record and
//! its partition goes on.
//!
//! A real broker wedges its group coordinator only under load that the tests cannot make
//! on demand (`docs/notes/broker.md`), so the first test builds the state it leaves behind
//! from real parts: a squatter, a second member of the group that owns the only partition
//! and never consumes it, which is exactly what an evicted-but-still-assigned member is to
//! the group.

// Helpers panic on failure: in a test, that is the report.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use faultline_outbox::consumer::{
    self, ConsumerHealth, ConsumerObserver, ConsumerSettings, ConsumerStats, Handler, HandlerError,
    Incoming, StallPolicy,
};
use faultline_outbox::kafka::{TopicSpec, consumer_config, ensure_topics};
use faultline_testkit::{TestDatabase, kafka_brokers, unique};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

const RECORDS: usize = 20;

/// A bound short enough for a test, long enough for a join on a busy broker.
fn policy() -> StallPolicy {
    StallPolicy {
        bound: Duration::from_secs(4),
        recreations: 1,
    }
}

/// A fresh one-partition topic named after `prefix`.
async fn one_partition_topic(prefix: &str) -> String {
    let topic = unique(prefix).replace('_', ".");
    ensure_topics(
        &kafka_brokers(),
        &[TopicSpec {
            name: topic.clone(),
            partitions: 1,
            replication_factor: 1,
        }],
    )
    .await
    .unwrap();
    topic
}

/// A one-partition topic holding `RECORDS` records.
async fn topic_with_records() -> String {
    let topic = one_partition_topic("wd").await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .create()
        .unwrap();
    for n in 0..RECORDS {
        let payload = n.to_string();
        producer
            .send(
                FutureRecord::<(), _>::to(&topic).payload(&payload).headers(
                    OwnedHeaders::new().insert(Header {
                        key: "type",
                        value: Some("test.Step"),
                    }),
                ),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    topic
}

/// Counts records; hangs forever on the first one it sees while `hang_once` is set, and
/// panics on the record whose payload is `panic_on`.
#[derive(Clone, Default)]
struct Counting {
    handled: Arc<AtomicUsize>,
    entered: Arc<AtomicUsize>,
    hang_once: Arc<AtomicBool>,
    panic_on: Option<&'static str>,
}

impl Handler for Counting {
    type Prepared = ();

    async fn prepare(&self, _: &Incoming) -> Result<(), HandlerError> {
        Ok(())
    }

    async fn handle(
        &self,
        _tx: &mut PgConnection,
        message: &Incoming,
        (): (),
    ) -> Result<(), HandlerError> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        if self.hang_once.swap(false, Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self
            .panic_on
            .is_some_and(|poison| poison.as_bytes() == message.payload)
        {
            panic!("cannot handle record {}", message.offset);
        }
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct Running {
    stats: Arc<ConsumerStats>,
    health: Arc<ConsumerHealth>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start(pool: &PgPool, topic: &str, group: &str, handler: Counting) -> Running {
    let mut settings = ConsumerSettings::new(group, vec![topic.to_owned()], format!("{topic}.dlq"));
    settings.stall = policy();
    let (stats, health) = (settings.stats.clone(), settings.health.clone());
    let shutdown = CancellationToken::new();
    let run = consumer::run(
        consumer_config(&kafka_brokers(), group, "watchdog-test"),
        ConsumerObserver::default(),
        pool.clone(),
        handler,
        settings,
        shutdown.clone(),
    );
    let task = tokio::spawn(async move {
        run.await.unwrap();
    });
    Running {
        stats,
        health,
        shutdown,
        task,
    }
}

/// Waits up to `limit` for `done`, failing with `what`.
async fn eventually(limit: Duration, what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A group member that takes the partition and never reads it: pauses what it owns, never
/// commits, and keeps heartbeating until `leave` is set.
fn squat(topic: &str, group: &str, leave: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let mut config = consumer_config(&kafka_brokers(), group, "squatter");
    config.set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    std::thread::spawn(move || {
        while !leave.load(Ordering::SeqCst) {
            let _ = consumer.poll(Duration::from_millis(100));
            if let Ok(owned) = consumer.assignment()
                && owned.count() > 0
            {
                let _ = consumer.pause(&owned);
            }
        }
        consumer.unsubscribe();
        // Dropping the consumer closes it: it leaves the group at once.
    })
}

async fn database() -> TestDatabase {
    let db = TestDatabase::create("watchdog").await.unwrap();
    faultline_outbox::migrate(&db.pool).await.unwrap();
    db
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_that_never_gets_the_waiting_work_replaces_itself_then_fails_its_probes() {
    let db = database().await;
    let topic = topic_with_records().await;
    let group = unique("wd-squat");
    let leave = Arc::new(AtomicBool::new(false));
    let squatter = squat(&topic, &group, leave.clone());
    // Let the squatter own the partition before the real member joins.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let handler = Counting::default();
    let running = start(&db.pool, &topic, &group, handler.clone());
    let stats = running.stats.clone();
    eventually(Duration::from_secs(30), "the member is replaced", || {
        stats.snapshot().recreations >= 1
    })
    .await;
    let health = running.health.clone();
    eventually(Duration::from_secs(30), "readiness fails", || {
        health.readiness().is_err()
    })
    .await;
    assert!(
        health.readiness().unwrap_err().contains(&topic),
        "the reason names the partition: {:?}",
        health.readiness()
    );
    eventually(Duration::from_secs(30), "liveness fails", || {
        health.liveness().is_err()
    })
    .await;
    assert_eq!(
        stats.snapshot().recreations,
        1,
        "one new member, then it gives up"
    );
    assert_eq!(handler.handled.load(Ordering::SeqCst), 0);

    // The squatter leaves: the group rebalances, the member gets the partition and works.
    leave.store(true, Ordering::SeqCst);
    squatter.join().unwrap();
    let handled = handler.handled.clone();
    eventually(Duration::from_secs(60), "every record is handled", || {
        handled.load(Ordering::SeqCst) == RECORDS
    })
    .await;
    eventually(Duration::from_secs(30), "the probes pass again", || {
        health.readiness().is_ok() && health.liveness().is_ok()
    })
    .await;

    running.shutdown.cancel();
    running.task.await.unwrap();
    db.drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_whose_handler_hangs_is_replaced_and_the_new_member_finishes_the_work() {
    let db = database().await;
    let topic = topic_with_records().await;
    let group = unique("wd-hang");
    let handler = Counting::default();
    handler.hang_once.store(true, Ordering::SeqCst);

    let running = start(&db.pool, &topic, &group, handler.clone());
    let handled = handler.handled.clone();
    eventually(Duration::from_secs(90), "every record is handled", || {
        handled.load(Ordering::SeqCst) == RECORDS
    })
    .await;
    let done = running.stats.snapshot();
    assert_eq!(done.recreations, 1, "{done:?}");
    assert_eq!(done.processed as usize, RECORDS, "{done:?}");
    // The hung record was abandoned with its member and handled again by the next one.
    assert_eq!(handler.entered.load(Ordering::SeqCst), RECORDS + 1);
    assert!(running.health.readiness().is_ok() && running.health.liveness().is_ok());

    running.shutdown.cancel();
    running.task.await.unwrap();
    db.drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_that_panics_parks_its_record_and_the_partition_goes_on() {
    let db = database().await;
    let topic = topic_with_records().await;
    let group = unique("wd-panic");
    let handler = Counting {
        panic_on: Some("7"),
        ..Counting::default()
    };

    let running = start(&db.pool, &topic, &group, handler.clone());
    let stats = running.stats.clone();
    eventually(
        Duration::from_secs(60),
        "every other record is handled",
        || {
            let done = stats.snapshot();
            done.processed as usize == RECORDS - 1 && done.parked == 1
        },
    )
    .await;
    let done = stats.snapshot();
    assert_eq!(done.panics, 1, "{done:?}");
    assert_eq!(handler.handled.load(Ordering::SeqCst), RECORDS - 1);
    let (offset, error): (i64, String) = sqlx::query_as(
        r#"SELECT "offset", error FROM inbox WHERE outcome = 'parked' AND consumer = $1"#,
    )
    .bind(&group)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(offset, 7);
    assert!(error.contains("cannot handle record 7"), "{error}");
    // Its dead letter carries one `type` (the relay's own) and the original as its own header.
    let headers: sqlx::types::Json<std::collections::BTreeMap<String, String>> =
        sqlx::query_scalar("SELECT headers FROM outbox WHERE topic = $1")
            .bind(format!("{topic}.dlq"))
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(!headers.contains_key("type"), "{headers:?}");
    assert_eq!(
        headers.get("dlq.original.type").map(String::as_str),
        Some("test.Step")
    );
    assert!(running.health.readiness().is_ok());

    running.shutdown.cancel();
    running.task.await.unwrap();
    db.drop().await.unwrap();
}

/// Accepts an event id once; a second delivery of it fails for good in `prepare`, as a
/// redelivered command can (a provider that refuses to repeat itself, say).
#[derive(Clone, Default)]
struct RefusesRepeats {
    seen: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl Handler for RefusesRepeats {
    type Prepared = ();

    async fn prepare(&self, message: &Incoming) -> Result<(), HandlerError> {
        let first = self.seen.lock().unwrap().insert(message.event_id.clone());
        if first {
            Ok(())
        } else {
            Err(HandlerError::Permanent("seen before".into()))
        }
    }

    async fn handle(&self, _: &mut PgConnection, _: &Incoming, (): ()) -> Result<(), HandlerError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_redelivery_of_a_finished_record_is_a_duplicate_not_a_parked_record() {
    let db = database().await;
    let topic = one_partition_topic("wd-repeat").await;
    // The same event twice, as a relay that lost its lock session mid-round sends it.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .create()
        .unwrap();
    for _ in 0..2 {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "id",
                value: Some("event-1"),
            })
            .insert(Header {
                key: "type",
                value: Some("test.Step"),
            });
        producer
            .send(
                FutureRecord::<(), _>::to(&topic)
                    .payload("1")
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }

    let group = unique("wd-repeat");
    let mut settings = ConsumerSettings::new(&group, vec![topic.clone()], format!("{topic}.dlq"));
    settings.base_backoff = Duration::from_millis(10);
    let stats = settings.stats.clone();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(consumer::run(
        consumer_config(&kafka_brokers(), &group, "repeat-test"),
        ConsumerObserver::default(),
        db.pool.clone(),
        RefusesRepeats::default(),
        settings,
        shutdown.clone(),
    ));
    eventually(
        Duration::from_secs(60),
        "both deliveries are finished",
        || {
            let done = stats.snapshot();
            done.processed + done.duplicates + done.parked >= 2
        },
    )
    .await;
    let done = stats.snapshot();
    assert_eq!(
        (done.processed, done.duplicates, done.parked),
        (1, 1, 0),
        "the second delivery found the record finished: {done:?}"
    );
    let dead_letters: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE topic = $1")
        .bind(format!("{topic}.dlq"))
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        dead_letters, 0,
        "nothing finished is sent to the dead-letter topic"
    );

    shutdown.cancel();
    run.await.unwrap().unwrap();
    db.drop().await.unwrap();
}
