//! The inventory service binary: telemetry and configuration from the environment, then
//! [`inventory::run`] until SIGTERM, then a final flush of the tracer. `--check-config` and
//! `healthcheck` answer and exit instead (`faultline_platform::command`).

use std::process::ExitCode;

use faultline_telemetry::TelemetryConfig;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    if let Some(code) = faultline_platform::command::answer("inventory", inventory::PREFIX, || {
        inventory::Config::load().map(|config| config.admin.listen)
    }) {
        return Ok(code);
    }
    let telemetry = faultline_telemetry::init(TelemetryConfig::from_env("inventory")?)?;
    let result = match inventory::Config::load() {
        Ok(config) => inventory::run(config, faultline_platform::shutdown::on_signals()).await,
        Err(error) => Err(error.into()),
    };
    if let Err(error) = &result {
        tracing::error!(error = %format!("{error:#}"), "inventory stopped with an error");
    }
    telemetry.shutdown();
    result.map(|()| ExitCode::SUCCESS)
}
