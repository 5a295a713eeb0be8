//! A run against a checkout that is already up: any Faultline the URL names (loopback
//! unless `--allow-remote`), with tokens from the dev signing key in `--auth-dir`, optional
//! stock through inventory's gRPC, and endings by polling or from `orders.events`.

use std::sync::Arc;

use anyhow::Context;
use faultline_e2e::{Client, Credentials};
use tokio_util::sync::CancellationToken;

use crate::checkout::Checkout;
use crate::config::{self, Target, TerminalSource, Workload};
use crate::driver::Driver;
use crate::plan::Plan;
use crate::report::LoadResult;
use crate::terminal::{self, Tracker};
use crate::{TOKEN_TTL, now_unix, stock};

/// Runs `plan` against the checkout `target` names.
pub async fn run(
    target: &Target,
    workload: &Workload,
    plan: &Plan,
    stop: CancellationToken,
) -> anyhow::Result<LoadResult> {
    config::check_loopback(&target.url, target.allow_remote)?;
    let credentials = Credentials::load(&target.auth_dir, &target.certs_dir)?;
    if target.add_stock > 0 {
        let client = Client::new(&target.url, &target.inventory_url, credentials.clone());
        let available = stock::add(&client, &workload.sku, target.add_stock).await?;
        eprintln!("[load] {available} x {} in stock", workload.sku);
    }
    let tracker = Arc::new(Tracker::default());
    let consumer = match target.terminal {
        TerminalSource::Events => {
            let brokers = target.brokers.clone();
            let topic = format!("{}orders.events", target.topic_prefix);
            let consumer =
                tokio::task::spawn_blocking(move || terminal::events_consumer(&brokers, &topic))
                    .await
                    .context("the consumer setup panicked")??;
            Some(tokio::spawn(terminal::consume_events(
                consumer,
                tracker.clone(),
                stop.clone(),
            )))
        }
        TerminalSource::Poll => None,
    };
    let checkout = Checkout::new(
        &target.url,
        &credentials,
        workload.customers,
        &workload.sku,
        workload.quantity,
        workload.request_timeout,
        TOKEN_TTL,
    )?;
    let driver = Driver {
        checkout: Arc::new(checkout),
        tracker,
        terminal: target.terminal,
        workload: workload.clone(),
        stop: stop.clone(),
    };
    let started_unix_s = now_unix();
    let mode = plan.drive(&driver).await;
    stop.cancel();
    if let Some(task) = consumer {
        let _ = task.await;
    }
    Ok(LoadResult::new(
        target.url.clone(),
        target.terminal,
        workload,
        started_unix_s,
        mode,
    ))
}
