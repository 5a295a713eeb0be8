//! The inventory service binary: telemetry and configuration from the environment, then
//! [`inventory::run`] until SIGTERM, then a final flush of the tracer.

use faultline_telemetry::TelemetryConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = faultline_telemetry::init(TelemetryConfig::from_env("inventory")?)?;
    let result = match inventory::Config::load() {
        Ok(config) => inventory::run(config, faultline_platform::shutdown::on_signals()).await,
        Err(error) => Err(error.into()),
    };
    if let Err(error) = &result {
        tracing::error!(error = %format!("{error:#}"), "inventory stopped with an error");
    }
    telemetry.shutdown();
    result
}
