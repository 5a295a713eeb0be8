//! What every end-to-end test ends with: the sagas settle, then money, stock and messages
//! are checked across the three services' own databases.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use sqlx::PgPool;

use super::{Service, System};

impl System {
    /// Waits until no saga is still running, for at most `timeout`.
    pub async fn wait_until_settled(&self, timeout: Duration) -> anyhow::Result<()> {
        let checkout = self.database(Service::Checkout).await?;
        let started = Instant::now();
        loop {
            let running: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM order_sagas WHERE state NOT IN ('completed', 'compensated')",
            )
            .fetch_one(&checkout)
            .await?;
            if running == 0 {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!("{running} sagas still running after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Checks the invariants every test ends with, once sagas have settled. `loaded` is the
    /// stock the test loaded per SKU.
    pub async fn check_invariants(&self, loaded: &BTreeMap<String, i64>) -> anyhow::Result<()> {
        let checkout = self.database(Service::Checkout).await?;
        let inventory = self.database(Service::Inventory).await?;
        let payments = self.database(Service::Payments).await?;

        // No order is left non-terminal.
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'PENDING'")
                .fetch_one(&checkout)
                .await?;
        ensure!(pending == 0, "{pending} orders left PENDING");

        // Stock is conserved, nothing stays reserved, and what was sold is what confirmed
        // orders bought.
        let stock: Vec<(String, i64, i64, i64, i64)> =
            sqlx::query_as("SELECT sku, available, reserved, sold, loaded FROM products")
                .fetch_all(&inventory)
                .await?;
        let sold_by_orders: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
            "SELECT i.sku, sum(i.quantity)::bigint FROM order_items i
             JOIN orders o ON o.id = i.order_id WHERE o.status = 'CONFIRMED' GROUP BY i.sku",
        )
        .fetch_all(&checkout)
        .await?
        .into_iter()
        .collect();
        for (sku, available, reserved, sold, total) in &stock {
            ensure!(
                available + reserved + sold == *total,
                "{sku}: available {available} + reserved {reserved} + sold {sold} != loaded {total}"
            );
            ensure!(*reserved == 0, "{sku}: {reserved} units still reserved");
            if let Some(expected) = loaded.get(sku) {
                ensure!(
                    total == expected,
                    "{sku}: loaded {total}, the test loaded {expected}"
                );
            }
            let bought = sold_by_orders.get(sku).copied().unwrap_or(0);
            ensure!(
                *sold == bought,
                "{sku}: sold {sold}, confirmed orders bought {bought}"
            );
        }

        // Every capture belongs to a confirmed order, for its total; every confirmed order
        // is captured exactly once; nothing stays authorized.
        let confirmed: BTreeMap<String, i64> = sqlx::query_as::<_, (uuid::Uuid, i64)>(
            "SELECT id, total_minor FROM orders WHERE status = 'CONFIRMED'",
        )
        .fetch_all(&checkout)
        .await?
        .into_iter()
        .map(|(id, total)| (id.to_string(), total))
        .collect();
        let captured: Vec<(uuid::Uuid, i64)> =
            sqlx::query_as("SELECT order_id, amount_minor FROM payments WHERE status = 'captured'")
                .fetch_all(&payments)
                .await?;
        for (order_id, amount) in &captured {
            let total = confirmed.get(&order_id.to_string());
            ensure!(
                total == Some(amount),
                "payment of order {order_id} captured {amount} but the order's confirmed total is {total:?}"
            );
        }
        ensure!(
            captured.len() == confirmed.len(),
            "{} confirmed orders but {} captures",
            confirmed.len(),
            captured.len()
        );
        let authorized: i64 =
            sqlx::query_scalar("SELECT count(*) FROM payments WHERE status = 'authorized'")
                .fetch_one(&payments)
                .await?;
        ensure!(authorized == 0, "{authorized} payments left authorized");
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM payments WHERE status = 'pending'")
                .fetch_one(&payments)
                .await?;
        ensure!(
            pending == 0,
            "{pending} payments left pending (an authorization never finished nor voided)"
        );

        // The ledger balances, per payment and overall.
        let unbalanced: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT payment_id FROM ledger_entries
             GROUP BY payment_id HAVING sum(amount_minor) <> 0) u",
        )
        .fetch_one(&payments)
        .await?;
        ensure!(
            unbalanced == 0,
            "{unbalanced} payments with an unbalanced ledger"
        );
        let captured_total: i64 = captured.iter().map(|(_, amount)| amount).sum();
        let debits: Option<i64> = sqlx::query_scalar(
            "SELECT sum(amount_minor)::bigint FROM ledger_entries WHERE amount_minor > 0",
        )
        .fetch_one(&payments)
        .await?;
        ensure!(
            debits.unwrap_or(0) == captured_total,
            "ledger debits {debits:?} != captured total {captured_total}"
        );

        // Every message a service parked is accounted for, and nothing else is.
        for (service, pool) in [
            (Service::Checkout, &checkout),
            (Service::Inventory, &inventory),
            (Service::Payments, &payments),
        ] {
            self.check_parked(service, pool).await?;
        }

        // The provider's books agree with payments': holds, captures, and none left behind.
        let (status, provider) = self.admin(Service::Payments, "/provider").await?;
        ensure!(
            status == 200,
            "payments' /provider answered {status}: {provider}"
        );
        crate::provider_books::check(&provider, &checkout, &payments).await
    }

    /// Every inbox row `service` parked has its dead letter, on `<service>.dlq` or still in
    /// the outbox on its way there, and every dead letter has its parked row.
    async fn check_parked(&self, service: Service, pool: &PgPool) -> anyhow::Result<()> {
        let found = crate::chaos::dlq::parked(self, service, pool).await?;
        let unlettered = found.unlettered();
        ensure!(
            unlettered.is_empty(),
            "{}: parked {unlettered:?} but no dead letter carries them",
            service.name()
        );
        let orphans = found.orphans();
        ensure!(
            orphans.is_empty(),
            "{}: dead letters {orphans:?} without a parked inbox row",
            service.name()
        );
        Ok(())
    }
}
