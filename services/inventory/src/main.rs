//! The inventory service binary: configuration from the environment, then [`inventory::run`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    faultline_telemetry::init("inventory").map_err(|e| anyhow::anyhow!(e))?;
    let config = inventory::Config::load()?;
    let shutdown = faultline_platform::shutdown::on_signals();
    inventory::run(config, shutdown).await
}
