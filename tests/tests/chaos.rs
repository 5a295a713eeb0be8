//! The chaos matrix with its auditor (`faultline_e2e::chaos`, docs/resilience.md).
//!
//! `make test` runs the short matrix (every fault once, a few seconds each); `make chaos`
//! runs the full one (`CHAOS_MODE=full`) and writes its table to `.state/chaos/report.md`.
//! Either fails if the auditor finds a single violation.

use faultline_e2e::chaos::{self, Settings};

#[tokio::test(flavor = "multi_thread")]
async fn every_fault_heals_with_nothing_lost_or_doubled() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let started = std::time::Instant::now();
    let report = chaos::run(&settings).await?;
    let table = report.render();
    println!(
        "{table}\nchaos: matrix took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.state/chaos");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("report.md"), &table)?;
    assert!(
        report.passed(),
        "the auditor found violations (seed {}):\n{table}",
        report.seed
    );
    Ok(())
}
