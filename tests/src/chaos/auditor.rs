//! The auditor: after a fault has healed and the system has gone quiet, it reads each
//! service's own database (and the dead-letter topics) and checks every invariant the
//! saga promises, across services, for every order ever placed in the run.
//!
//! It reports violations instead of stopping at the first, and sorts them into *lost*
//! (an accepted order missing or unfinished, or an effect a decided order should have had
//! and has not), *doubled* (an effect applied more than once) and *other* (an effect that
//! contradicts its order). `System::check_invariants` asks similar questions for the
//! functional tests; this one also joins every order to its reservation and payment.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::PgPool;
use uuid::Uuid;

use crate::system::{Service, System};

use super::dlq;

/// What a violation costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// An accepted order missing or not terminal, or a decided order missing its effect.
    Lost,
    /// An effect applied twice.
    Doubled,
    /// An effect that contradicts its order.
    Other,
}

/// One broken invariant, said in words.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    pub kind: Kind,
    /// What is wrong, naming the order or SKU.
    pub what: String,
}

/// What the auditor found.
#[derive(Debug, Default)]
pub struct Audit {
    /// Every broken invariant.
    pub violations: Vec<Violation>,
    /// Inbox rows parked, per service.
    pub parked: BTreeMap<&'static str, usize>,
    /// Outbox rows the relay parked (refused by the broker for good), over the three.
    pub relay_parked: i64,
}

/// Pools on the three databases.
pub type Pools = BTreeMap<Service, PgPool>;

struct Order {
    status: String,
    total: i64,
    items: BTreeMap<String, i64>,
}

impl Audit {
    fn lost(&mut self, what: String) {
        self.push(Kind::Lost, what);
    }
    fn doubled(&mut self, what: String) {
        self.push(Kind::Doubled, what);
    }
    fn other(&mut self, what: String) {
        self.push(Kind::Other, what);
    }
    fn push(&mut self, kind: Kind, what: String) {
        self.violations.push(Violation { kind, what });
    }
}

/// Audits the whole system. `accepted` are the orders a client got 202 for; `loaded` the
/// stock loaded per SKU.
pub async fn audit(
    system: &System,
    pools: &Pools,
    accepted: &BTreeSet<Uuid>,
    loaded: &BTreeMap<String, i64>,
) -> anyhow::Result<Audit> {
    let mut audit = Audit::default();
    let checkout = &pools[&Service::Checkout];
    let inventory = &pools[&Service::Inventory];
    let payments = &pools[&Service::Payments];

    let mut orders: BTreeMap<Uuid, Order> = BTreeMap::new();
    for (id, status, total) in
        sqlx::query_as::<_, (Uuid, String, i64)>("SELECT id, status, total_minor FROM orders")
            .fetch_all(checkout)
            .await?
    {
        let items = BTreeMap::new();
        orders.insert(
            id,
            Order {
                status,
                total,
                items,
            },
        );
    }
    for (id, sku, quantity) in
        sqlx::query_as::<_, (Uuid, String, i64)>("SELECT order_id, sku, quantity FROM order_items")
            .fetch_all(checkout)
            .await?
    {
        if let Some(order) = orders.get_mut(&id) {
            order.items.insert(sku, quantity);
        }
    }

    // Every accepted order exists and is terminal, and its saga agrees with it.
    for id in accepted {
        if !orders.contains_key(id) {
            audit.lost(format!(
                "order {id} was accepted (202) but checkout has no such order"
            ));
        }
    }
    for (id, order) in &orders {
        if order.status == "PENDING" {
            audit.lost(format!("order {id} is still PENDING"));
        }
    }
    let sagas: Vec<(Uuid, String)> = sqlx::query_as("SELECT order_id, state FROM order_sagas")
        .fetch_all(checkout)
        .await?;
    for (id, state) in &sagas {
        let status = orders.get(id).map(|o| o.status.as_str());
        match (state.as_str(), status) {
            ("completed", Some("CONFIRMED")) | ("compensated", Some("CANCELLED")) => {}
            ("completed" | "compensated", _) => {
                audit.other(format!(
                    "saga of order {id} is {state} but the order is {status:?}"
                ));
            }
            _ => audit.lost(format!("saga of order {id} is still {state}")),
        }
    }

    // Stock: each order's reservation, then each product's buckets.
    let mut reservations: BTreeMap<Uuid, (String, BTreeMap<String, i64>)> = BTreeMap::new();
    for (id, state) in
        sqlx::query_as::<_, (Uuid, String)>("SELECT order_id, state FROM reservations")
            .fetch_all(inventory)
            .await?
    {
        reservations.insert(id, (state, BTreeMap::new()));
    }
    for (id, sku, quantity) in sqlx::query_as::<_, (Uuid, String, i64)>(
        "SELECT order_id, sku, quantity FROM reservation_lines",
    )
    .fetch_all(inventory)
    .await?
    {
        if let Some((_, lines)) = reservations.get_mut(&id) {
            lines.insert(sku, quantity);
        }
    }
    let mut held: BTreeMap<String, i64> = BTreeMap::new();
    let mut committed: BTreeMap<String, i64> = BTreeMap::new();
    for (id, (state, lines)) in &reservations {
        let order = orders.get(id);
        let bucket = match state.as_str() {
            "reserved" => &mut held,
            "committed" => &mut committed,
            _ => continue,
        };
        for (sku, quantity) in lines {
            *bucket.entry(sku.clone()).or_default() += quantity;
        }
        match (state.as_str(), order.map(|o| o.status.as_str())) {
            ("committed", Some("CONFIRMED")) => {
                if order.map(|o| &o.items) != Some(lines) {
                    audit.other(format!(
                        "order {id}: committed lines {lines:?} differ from its items"
                    ));
                }
            }
            ("reserved", _) => audit.other(format!("order {id}: stock still reserved ({lines:?})")),
            (_, status) => audit.other(format!(
                "order {id}: stock sold but the order is {status:?}"
            )),
        }
    }
    for id in orders.keys().filter(|id| orders[*id].status == "CONFIRMED") {
        if reservations.get(id).map(|(state, _)| state.as_str()) != Some("committed") {
            audit.lost(format!(
                "order {id} is CONFIRMED but its stock was never committed"
            ));
        }
    }
    let products: Vec<(String, i64, i64, i64, i64)> =
        sqlx::query_as("SELECT sku, available, reserved, sold, loaded FROM products")
            .fetch_all(inventory)
            .await?;
    let mut bought: BTreeMap<&str, i64> = BTreeMap::new();
    for order in orders.values().filter(|o| o.status == "CONFIRMED") {
        for (sku, quantity) in &order.items {
            *bought.entry(sku.as_str()).or_default() += quantity;
        }
    }
    for (sku, available, reserved, sold, total) in &products {
        if available + reserved + sold != *total {
            audit.other(format!(
                "{sku}: available {available} + reserved {reserved} + sold {sold} != loaded {total}"
            ));
        }
        if loaded.get(sku).is_some_and(|expected| expected != total) {
            audit.other(format!(
                "{sku}: loaded {total}, the run loaded {:?}",
                loaded.get(sku)
            ));
        }
        let reservations_hold = held.get(sku).copied().unwrap_or(0);
        if *reserved != reservations_hold {
            audit.other(format!(
                "{sku}: reserved {reserved} but reservations hold {reservations_hold}"
            ));
        }
        let lines_sold = committed.get(sku).copied().unwrap_or(0);
        let orders_bought = bought.get(sku.as_str()).copied().unwrap_or(0);
        if *sold > lines_sold.max(orders_bought) {
            audit.doubled(format!(
                "{sku}: sold {sold}, committed reservations {lines_sold}, confirmed orders bought {orders_bought}"
            ));
        } else if *sold != lines_sold || *sold != orders_bought {
            audit.lost(format!(
                "{sku}: sold {sold}, committed reservations {lines_sold}, confirmed orders bought {orders_bought}"
            ));
        }
    }

    payments_and_ledger(&mut audit, payments, &orders).await?;
    parked_messages(&mut audit, system, pools).await?;
    Ok(audit)
}

/// Captures, holds and the ledger, against the orders' outcomes.
async fn payments_and_ledger(
    audit: &mut Audit,
    payments: &PgPool,
    orders: &BTreeMap<Uuid, Order>,
) -> anyhow::Result<()> {
    let rows: Vec<(Uuid, Uuid, String, Option<i64>)> =
        sqlx::query_as("SELECT id, order_id, status::text, amount_minor FROM payments")
            .fetch_all(payments)
            .await?;
    let ledger: BTreeMap<Uuid, (i64, i64, i64)> = sqlx::query_as::<_, (Uuid, i64, i64, i64)>(
        "SELECT payment_id, count(*), sum(amount_minor)::bigint,
                coalesce(sum(amount_minor) FILTER (WHERE amount_minor > 0), 0)::bigint
         FROM ledger_entries GROUP BY payment_id",
    )
    .fetch_all(payments)
    .await?
    .into_iter()
    .map(|(id, entries, sum, debits)| (id, (entries, sum, debits)))
    .collect();
    let mut captured: BTreeMap<Uuid, usize> = BTreeMap::new();
    for (payment, order_id, status, amount) in &rows {
        let order = orders.get(order_id);
        let order_status = order.map(|o| o.status.as_str());
        let (entries, sum, debits) = ledger.get(payment).copied().unwrap_or((0, 0, 0));
        if sum != 0 {
            audit.other(format!(
                "payment {payment} (order {order_id}): ledger sums to {sum}"
            ));
        }
        match status.as_str() {
            "captured" => {
                *captured.entry(*order_id).or_default() += 1;
                if order_status != Some("CONFIRMED") {
                    audit.other(format!(
                        "order {order_id} captured but the order is {order_status:?}"
                    ));
                }
                let total = order.map(|o| o.total);
                if *amount != total {
                    audit.other(format!(
                        "order {order_id} captured {amount:?}, its total is {total:?}"
                    ));
                }
                let expected_entries = if amount.unwrap_or(0) == 0 { 0 } else { 2 };
                if entries > expected_entries || debits > amount.unwrap_or(0) {
                    audit.doubled(format!(
                        "order {order_id}: {entries} ledger entries, {debits} debited for a capture of {amount:?}"
                    ));
                } else if entries < expected_entries {
                    audit.lost(format!(
                        "order {order_id}: captured but only {entries} ledger entries"
                    ));
                }
            }
            "authorized" | "pending" => audit.other(format!(
                "order {order_id} ({order_status:?}): authorization left {status}"
            )),
            _ => {
                if entries != 0 {
                    audit.other(format!(
                        "payment {payment} is {status} with {entries} ledger entries"
                    ));
                }
            }
        }
    }
    for (id, order) in orders.iter().filter(|(_, o)| o.status == "CONFIRMED") {
        match captured.get(id).copied().unwrap_or(0) {
            1 => {}
            0 => audit.lost(format!(
                "order {id} is CONFIRMED (total {}) but never captured",
                order.total
            )),
            n => audit.doubled(format!("order {id} captured {n} times")),
        }
    }
    let overall: Option<i64> =
        sqlx::query_scalar("SELECT sum(amount_minor)::bigint FROM ledger_entries")
            .fetch_one(payments)
            .await?;
    if overall.unwrap_or(0) != 0 {
        audit.other(format!("the ledger is unbalanced by {overall:?}"));
    }
    Ok(())
}

/// Every inbox row parked has its dead letter (on the topic, or still in the outbox on its
/// way there), and every dead letter its parked inbox row.
async fn parked_messages(audit: &mut Audit, system: &System, pools: &Pools) -> anyhow::Result<()> {
    for service in Service::ALL {
        let pool = &pools[&service];
        let found = dlq::parked(system, service, pool).await?;
        for id in found.unlettered() {
            audit.lost(format!(
                "{}: inbox parked {id} but no dead letter carries it",
                service.name()
            ));
        }
        for id in found.orphans() {
            audit.other(format!(
                "{}: dead letter for {id} without a parked inbox row",
                service.name()
            ));
        }
        audit.parked.insert(service.name(), found.parked.len());
        let relay_parked: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL")
                .fetch_one(pool)
                .await?;
        audit.relay_parked += relay_parked;
    }
    Ok(())
}
