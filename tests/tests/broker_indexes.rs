//! The broker the tests start carries the indexes `scripts/deps.sh` adds to the shared one
//! (`scripts/tansu-sqlite-indexes.sql`), and tansu's lookups use them.
//!
//! tansu 0.6.0 follows every record a fetch returns with a query for that record's headers,
//! and looks up a partition's watermark on every produce and fetch. Without these indexes
//! both are scans that grow with the log, and the broker slows down until it cannot keep up
//! (docs/notes/broker.md, "Why the broker slows down as its log grows"). The header query below
//! is tansu's own (`header_fetch.sql`, with literals for its parameters); the watermark one
//! has the shape of its `watermark_select.sql`.

use anyhow::{Context, ensure};
use faultline_e2e::broker::Broker;
use tokio::process::Command;

async fn query_plan(db: &std::path::Path, query: &str) -> anyhow::Result<String> {
    let output = Command::new("sqlite3")
        .arg(db)
        .arg(format!("explain query plan {query}"))
        .output()
        .await
        .context("running sqlite3 (scripts/deps.sh up installs it)")?;
    ensure!(
        output.status.success(),
        "sqlite3: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test]
async fn a_fetched_records_headers_and_a_partitions_watermark_are_found_by_index()
-> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(faultline_testkit::unique("broker-indexes"));
    let mut broker = Broker::start(dir.clone()).await?;
    let db = dir.join("tansu.db");

    let headers = query_plan(
        &db,
        "select h.k, h.v from header h \
         join record r on h.topition = r.topition and h.offset_id = r.offset_id \
         join topition tp on tp.id = r.topition \
         join topic t on tp.topic = t.id \
         join cluster c on t.cluster = c.id \
         where c.name = 'tansu' and t.name = 'orders' and tp.partition = 0 and r.offset_id = 7",
    )
    .await?;
    assert!(
        headers.contains("SEARCH h USING INDEX faultline_header_by_record"),
        "the header lookup scans instead:\n{headers}"
    );

    let watermark = query_plan(
        &db,
        "select w.low, w.high from watermark w where w.topition = 1",
    )
    .await?;
    assert!(
        watermark.contains("USING INDEX faultline_watermark_by_topition"),
        "the watermark lookup scans instead:\n{watermark}"
    );

    broker.kill().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
