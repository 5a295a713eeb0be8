//! The checkout service binary: configuration from the environment, then [`checkout::run`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    faultline_telemetry::init("checkout").map_err(|e| anyhow::anyhow!(e))?;
    let config = checkout::Config::load()?;
    let shutdown = faultline_platform::shutdown::on_signals();
    checkout::run(config, shutdown).await
}
