//! The payments service binary: configuration from the environment, then [`payments::run`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    faultline_telemetry::init("payments").map_err(|e| anyhow::anyhow!(e))?;
    let config = payments::Config::load()?;
    let shutdown = faultline_platform::shutdown::on_signals();
    payments::run(config, shutdown).await
}
