//! What the orchestrator sends: a saga's commands to the participants and the order's
//! outcome, as protobuf messages in envelopes, through the outbox in the caller's
//! transaction.

use faultline_platform::messaging::publish;
use faultline_proto::common::v1::{LineItem, Money};
use faultline_proto::envelope::Provenance;
use faultline_proto::inventory::v1 as inventory;
use faultline_proto::orders::v1 as orders;
use faultline_proto::payments::v1 as payments;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Orchestrator, OrderFacts, PRODUCER};
use crate::orders::OrderStatus;
use crate::saga::{Command, Decision};

impl Orchestrator {
    pub(super) fn provenance(order_id: Uuid, cause: Option<&str>) -> Provenance {
        Provenance {
            aggregate_id: order_id.to_string(),
            correlation_id: order_id.to_string(),
            causation_id: cause.map(str::to_owned),
            producer: PRODUCER,
        }
    }

    pub(super) async fn decide(
        &self,
        tx: &mut PgConnection,
        order_id: Uuid,
        order: &OrderFacts,
        decision: &Decision,
        cause: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        let topic = &self.topics.orders_events;
        let provenance = Self::provenance(order_id, cause);
        match decision {
            Decision::Confirm => {
                sqlx::query("UPDATE orders SET status = $2, updated_at = now() WHERE id = $1")
                    .bind(order_id)
                    .bind(OrderStatus::Confirmed)
                    .execute(&mut *tx)
                    .await?;
                tracing::info!(%order_id, "order confirmed");
                let event = orders::OrderConfirmed {
                    order_id: order_id.to_string(),
                    customer_id: order.customer_id.clone(),
                    total: Some(Money {
                        amount_minor: order.total_minor,
                        currency: order.currency.clone(),
                    }),
                };
                publish(tx, topic, "order", &event, provenance).await?;
            }
            Decision::Cancel { code, reason } => {
                sqlx::query(
                    "UPDATE orders SET status = $4, cancellation_code = $2,
                            cancellation_reason = $3, updated_at = now()
                     WHERE id = $1",
                )
                .bind(order_id)
                .bind(code.as_str())
                .bind(reason)
                .bind(OrderStatus::Cancelled)
                .execute(&mut *tx)
                .await?;
                tracing::info!(%order_id, %code, %reason, "order cancelled");
                let event = orders::OrderCancelled {
                    order_id: order_id.to_string(),
                    customer_id: order.customer_id.clone(),
                    reason: reason.clone(),
                };
                publish(tx, topic, "order", &event, provenance).await?;
            }
        }
        Ok(())
    }

    pub(super) async fn send(
        &self,
        tx: &mut PgConnection,
        order_id: Uuid,
        order: &OrderFacts,
        command: Command,
        cause: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        let id = order_id.to_string();
        let provenance = Self::provenance(order_id, cause);
        let inventory_topic = &self.topics.inventory_commands;
        let payments_topic = &self.topics.payments_commands;
        match command {
            Command::ReserveStock => {
                let lines: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT sku, quantity FROM order_items WHERE order_id = $1 ORDER BY sku",
                )
                .bind(order_id)
                .fetch_all(&mut *tx)
                .await?;
                let items = lines
                    .into_iter()
                    .map(|(sku, quantity)| {
                        u32::try_from(quantity)
                            .map(|quantity| LineItem { sku, quantity })
                            .map_err(|e| sqlx::Error::Decode(Box::new(e)))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let command = inventory::ReserveStock {
                    order_id: id.clone(),
                    items,
                };
                publish(tx, inventory_topic, "order", &command, provenance).await?;
            }
            Command::ReleaseStock => {
                let command = inventory::ReleaseStock {
                    order_id: id.clone(),
                };
                publish(tx, inventory_topic, "order", &command, provenance).await?;
            }
            Command::CommitStock => {
                let command = inventory::CommitStock {
                    order_id: id.clone(),
                };
                publish(tx, inventory_topic, "order", &command, provenance).await?;
            }
            Command::AuthorizePayment => {
                let command = payments::AuthorizePayment {
                    idempotency_key: format!("order:{id}:authorize"),
                    order_id: id.clone(),
                    customer_id: order.customer_id.clone(),
                    amount: Some(Money {
                        amount_minor: order.total_minor,
                        currency: order.currency.clone(),
                    }),
                };
                publish(tx, payments_topic, "order", &command, provenance).await?;
            }
            Command::VoidPayment => {
                let command = payments::VoidPayment {
                    order_id: id.clone(),
                };
                publish(tx, payments_topic, "order", &command, provenance).await?;
            }
            Command::CapturePayment => {
                let command = payments::CapturePayment {
                    order_id: id.clone(),
                };
                publish(tx, payments_topic, "order", &command, provenance).await?;
            }
        }
        Ok(())
    }
}
