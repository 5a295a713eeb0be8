//! The deadline sweeper against a real Postgres: one saga it cannot apply is pushed back and
//! counted, and the overdue sagas behind it are still handled.

// Helpers panic on failure: in a test, that is the report.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use checkout::MIGRATOR;
use checkout::orchestrator::{Orchestrator, SagaMetrics, Topics};
use faultline_testkit::TestDatabase;
use sqlx::PgPool;
use uuid::Uuid;

/// An order for one lamp whose saga waits for stock and is `overdue_by` past its deadline.
async fn overdue_saga(pool: &PgPool, state: &str, overdue_by: Duration) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO orders (id, customer_id, status, total_minor, currency)
         VALUES ($1, 'alice', 'PENDING', 2490, 'EUR')",
    )
    .bind(id)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO order_items (order_id, sku, name, quantity, unit_price_minor)
         VALUES ($1, 'LAMP-01', 'Desk lamp', 1, 2490)",
    )
    .bind(id)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO order_sagas (order_id, state, attempts, deadline_at)
         VALUES ($1, $2, 1, now() - make_interval(secs => $3))",
    )
    .bind(id)
    .bind(state)
    .bind(overdue_by.as_secs_f64())
    .execute(pool)
    .await
    .unwrap();
    id
}

#[tokio::test]
async fn a_saga_the_sweeper_cannot_apply_is_pushed_back_and_the_others_still_time_out() {
    let db = TestDatabase::create("sweeper").await.unwrap();
    MIGRATOR.run(&db.pool).await.unwrap();
    faultline_outbox::migrator().run(&db.pool).await.unwrap();
    let orchestrator = Orchestrator::new(
        Topics {
            inventory_commands: "inventory.commands".into(),
            payments_commands: "payments.commands".into(),
            orders_events: "orders.events".into(),
        },
        Duration::from_secs(15),
        3,
        SagaMetrics::default(),
    );
    // A newer build wrote a state this one does not know (its migration widened the check);
    // it is the most overdue, so the sweep meets it first.
    sqlx::raw_sql("ALTER TABLE order_sagas DROP CONSTRAINT order_sagas_state_check")
        .execute(&db.pool)
        .await
        .unwrap();
    let unreadable = overdue_saga(&db.pool, "refunding", Duration::from_secs(60)).await;
    let first = overdue_saga(&db.pool, "awaiting_stock", Duration::from_secs(30)).await;
    let second = overdue_saga(&db.pool, "awaiting_stock", Duration::from_secs(20)).await;

    let handled = orchestrator.sweep(&db.pool).await.unwrap();
    assert_eq!(handled, 2, "both readable sagas are handled");

    let (attempts, due_in_future): (i32, bool) =
        sqlx::query_as("SELECT attempts, deadline_at > now() FROM order_sagas WHERE order_id = $1")
            .bind(first)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (attempts, due_in_future),
        (2, true),
        "the step was sent again"
    );
    let (attempts, _): (i32, bool) =
        sqlx::query_as("SELECT attempts, deadline_at > now() FROM order_sagas WHERE order_id = $1")
            .bind(second)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(attempts, 2);

    let (failures, pushed_back): (i32, f64) = sqlx::query_as(
        "SELECT sweep_failures, extract(epoch FROM deadline_at - now())::float8
         FROM order_sagas WHERE order_id = $1",
    )
    .bind(unreadable)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(failures, 1);
    assert!(
        (10.0..=15.0).contains(&pushed_back),
        "pushed back by one step timeout, got {pushed_back} s"
    );
    // A second sweep right away finds nothing due: the bad saga does not spin.
    assert_eq!(orchestrator.sweep(&db.pool).await.unwrap(), 0);
    db.drop().await.unwrap();
}
