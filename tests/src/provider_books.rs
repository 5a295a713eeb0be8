//! Payments' books against its provider's, one of the invariants every end-to-end test ends
//! with ([`System::check_invariants`](crate::System::check_invariants)): what the provider
//! holds is what payments has authorized, what it captured is what payments captured and
//! booked, and nothing is held for a cancelled order.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, ensure};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// The part of payments' `GET /provider` compared here.
#[derive(Debug)]
struct Books {
    captures: i64,
    /// Order, amount and currency of each hold in place.
    open_holds: Vec<(Uuid, i64, String)>,
    captured_minor: BTreeMap<String, i64>,
    since_unix_ms: i64,
}

impl Books {
    fn parse(body: &str) -> anyhow::Result<Self> {
        let view: Value = serde_json::from_str(body)?;
        let number = |value: &Value, name: &str| {
            value[name]
                .as_i64()
                .with_context(|| format!("{name} is not a number in {value}"))
        };
        let open_holds = view["open_holds"]
            .as_array()
            .context("open_holds is not a list")?
            .iter()
            .map(|hold| {
                let order = hold["order_id"].as_str().context("hold without order_id")?;
                let currency = hold["currency"].as_str().context("hold without currency")?;
                Ok((
                    Uuid::parse_str(order)?,
                    number(hold, "amount_minor")?,
                    currency.to_owned(),
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        let captured_minor = view["captured_minor"]
            .as_object()
            .context("captured_minor is not an object")?
            .iter()
            .map(|(currency, amount)| {
                let amount = amount.as_i64().context("captured amount is not a number")?;
                Ok((currency.clone(), amount))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            captures: number(&view, "captures")?,
            open_holds,
            captured_minor,
            since_unix_ms: number(&view, "since_unix_ms")?,
        })
    }
}

/// Checks `provider` (the body of payments' `GET /provider`) against the databases.
pub(crate) async fn check(
    provider: &str,
    checkout: &PgPool,
    payments: &PgPool,
) -> anyhow::Result<()> {
    // A mark left on a payment is a capture or a release still owed to the provider.
    let waiting: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payments WHERE settling IS NOT NULL")
            .fetch_one(payments)
            .await?;
    ensure!(
        waiting == 0,
        "{waiting} payments still wait for the provider"
    );

    let books = Books::parse(provider).context("reading payments' /provider")?;
    // The simulated provider keeps its books in payments' process: after a restart during
    // the test they cover only part of the run, and would disagree for that reason alone.
    let older: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM payments WHERE created_at < to_timestamp($1::bigint / 1000.0)",
    )
    .bind(books.since_unix_ms)
    .fetch_one(payments)
    .await?;
    if older > 0 {
        eprintln!("provider books not compared: payments restarted after {older} payments");
        return Ok(());
    }

    // What the provider holds is what payments has authorized and not yet settled, order by
    // order (a free order holds nothing).
    let authorized: BTreeMap<Uuid, (i64, String)> = sqlx::query_as::<_, (Uuid, i64, String)>(
        "SELECT order_id, amount_minor, currency FROM payments
         WHERE status = 'authorized' AND amount_minor > 0",
    )
    .fetch_all(payments)
    .await?
    .into_iter()
    .map(|(order, amount, currency)| (order, (amount, currency)))
    .collect();
    let held: BTreeMap<Uuid, (i64, String)> = books
        .open_holds
        .into_iter()
        .map(|(order, amount, currency)| (order, (amount, currency)))
        .collect();
    // Checked first: the one failure that costs a customer money.
    let cancelled: BTreeSet<Uuid> =
        sqlx::query_scalar("SELECT id FROM orders WHERE status = 'CANCELLED'")
            .fetch_all(checkout)
            .await?
            .into_iter()
            .collect();
    let stranded: Vec<&Uuid> = held.keys().filter(|o| cancelled.contains(o)).collect();
    ensure!(
        stranded.is_empty(),
        "the provider still holds funds for cancelled orders {stranded:?}"
    );
    ensure!(
        held == authorized,
        "the provider holds {held:?} but payments has authorized {authorized:?}"
    );

    // What the provider captured is what payments captured, and what its ledger booked.
    let captured: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT currency, count(*), sum(amount_minor)::bigint FROM payments
         WHERE status = 'captured' AND amount_minor > 0 GROUP BY currency",
    )
    .fetch_all(payments)
    .await?;
    let captures: i64 = captured.iter().map(|(_, count, _)| count).sum();
    ensure!(
        books.captures == captures,
        "the provider made {} captures but payments captured {captures} payments",
        books.captures
    );
    let captured_minor: BTreeMap<String, i64> = captured
        .into_iter()
        .map(|(currency, _, amount)| (currency, amount))
        .collect();
    ensure!(
        books.captured_minor == captured_minor,
        "the provider captured {:?} but payments captured {captured_minor:?}",
        books.captured_minor
    );
    let booked: BTreeMap<String, i64> = sqlx::query_as(
        "SELECT currency, sum(amount_minor)::bigint FROM ledger_entries
         WHERE amount_minor > 0 GROUP BY currency",
    )
    .fetch_all(payments)
    .await?
    .into_iter()
    .collect();
    ensure!(
        booked == captured_minor,
        "the ledger debited {booked:?} but payments captured {captured_minor:?}"
    );
    Ok(())
}
