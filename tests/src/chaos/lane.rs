//! One lane of the matrix: a rig of its own and the faults given to it, in order.
//!
//! Each phase is warm-up, the fault, a cool-down with the load still on, then the drain
//! and the audit. Audits cover everything the lane has done so far; a violation is charged
//! to the fault after which it first appears.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use uuid::Uuid;

use crate::system::Service;

use super::Settings;
use super::auditor::{self, Violation};
use super::faults::Fault;
use super::load::{CATALOG, Placer, quantile};
use super::report::Row;
use super::rig::Rig;

/// What one lane found: rows and violations keyed by the fault's place in the matrix.
#[derive(Debug, Default)]
pub(super) struct Lane {
    pub(super) rows: Vec<(usize, Row)>,
    pub(super) violations: Vec<(usize, String, Violation)>,
}

/// Runs `faults` (each with its place in the matrix) on a fresh rig; tears the rig down if
/// the auditor found nothing, and leaves it on disk (logs, databases) for a look otherwise.
pub(super) async fn run(settings: Settings, faults: Vec<(usize, Fault)>) -> anyhow::Result<Lane> {
    let mut rig = Rig::start(settings.step_timeout).await?;
    rig.system.client.load_catalog(&CATALOG).await?;
    let loaded: BTreeMap<String, i64> = CATALOG
        .iter()
        .map(|p| (p.sku.to_owned(), p.stock))
        .collect();
    let mut lane = Lane::default();
    let mut accepted = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for (n, fault) in faults {
        let seed = settings.seed.wrapping_add(n as u64);
        let placer = Placer::start(
            rig.system.client.checkout_url(),
            &rig.system.credentials,
            settings.rate,
            seed,
        )?;
        tokio::time::sleep(settings.warmup).await;
        let injected = Instant::now();
        fault
            .run(&mut rig, &settings.durations, seed)
            .await
            .with_context(|| format!("injecting or healing `{fault}`"))?;
        let healed = Instant::now();
        println!(
            "chaos: {fault}: injected and healed in {:?}",
            healed - injected
        );
        tokio::time::sleep(settings.cooldown).await;
        let posts = placer.stop().await?;
        let drained = quiesce(&rig, settings.quiesce)
            .await
            .map(|quiet| quiet - healed);

        let ids: Vec<Uuid> = posts.iter().filter_map(|p| p.order_id).collect();
        accepted.extend(ids.iter().copied());
        let during: Vec<_> = posts
            .iter()
            .filter(|p| p.intended >= injected && p.intended <= healed)
            .collect();
        let during_ids: BTreeSet<Uuid> = during.iter().filter_map(|p| p.order_id).collect();
        let mut row = Row {
            fault: fault.to_string(),
            sent: posts.len(),
            accepted: ids.len(),
            drained,
            post_p99: quantile(during.iter().map(|p| p.latency).collect(), 0.99),
            ..Row::default()
        };
        outcomes(&rig, &ids, &during_ids, &mut row).await?;

        let audit = auditor::audit(&rig.system, &rig.pools, &accepted, &loaded).await?;
        for violation in audit.violations {
            if seen.insert(violation.clone()) {
                match violation.kind {
                    auditor::Kind::Lost => row.lost += 1,
                    auditor::Kind::Doubled => row.doubled += 1,
                    auditor::Kind::Other => row.other += 1,
                }
                lane.violations.push((n, fault.to_string(), violation));
            }
        }
        println!(
            "chaos: {fault}: {} accepted, drained in {drained:?}, {} new violations",
            row.accepted,
            row.lost + row.doubled + row.other
        );
        lane.rows.push((n, row));
    }
    if lane.violations.is_empty() && std::env::var_os("CHAOS_KEEP").is_none() {
        rig.teardown().await?;
    } else {
        println!(
            "chaos: logs and databases kept in .state/e2e/{} and {}",
            rig.system.run_id,
            rig.dir.display()
        );
    }
    Ok(lane)
}

/// Waits until no saga is running and no outbox row is pending in any service, for at most
/// `bound`; returns when, or `None`. Errors (Postgres still restarting) count as not quiet.
async fn quiesce(rig: &Rig, bound: Duration) -> Option<Instant> {
    let started = Instant::now();
    while started.elapsed() < bound {
        if let Ok(true) = quiet(rig).await {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

async fn quiet(rig: &Rig) -> anyhow::Result<bool> {
    let running: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM order_sagas WHERE state NOT IN ('completed', 'compensated')",
    )
    .fetch_one(&rig.pools[&Service::Checkout])
    .await?;
    if running > 0 {
        return Ok(false);
    }
    for pool in rig.pools.values() {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL AND parked_at IS NULL",
        )
        .fetch_one(pool)
        .await?;
        if pending > 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Fills in how the phase's accepted orders ended, and the decision latency of those
/// accepted while the fault was on.
async fn outcomes(
    rig: &Rig,
    ids: &[Uuid],
    during: &BTreeSet<Uuid>,
    row: &mut Row,
) -> anyhow::Result<()> {
    let rows: Vec<(Uuid, String, Option<String>, i64)> = sqlx::query_as(
        "SELECT id, status, cancellation_code,
                (extract(epoch FROM updated_at - created_at) * 1000)::bigint
         FROM orders WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&rig.pools[&Service::Checkout])
    .await?;
    let mut decided = Vec::new();
    for (id, status, code, millis) in rows {
        match status.as_str() {
            "CONFIRMED" => row.confirmed += 1,
            "CANCELLED" => row.cancelled += 1,
            _ => continue,
        }
        if let Some(code) = code.filter(|c| c.ends_with("_timeout")) {
            row.timeouts += 1;
            *row.timeout_codes.entry(code).or_default() += 1;
        }
        if during.contains(&id) {
            decided.push(Duration::from_millis(u64::try_from(millis).unwrap_or(0)));
        }
    }
    row.terminal_p99 = quantile(decided, 0.99);
    Ok(())
}
