//! Telemetry set-up shared by every service.
//!
//! Today this installs structured logging: JSON lines when stdout is not a terminal (what log
//! shippers want), human-readable lines when it is. `RUST_LOG` filters as usual and defaults
//! to `info`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;

/// Installs the global log subscriber for `service`. Call once, first thing in `main`.
///
/// Returns an error if a global subscriber is already installed.
pub fn init(service: &'static str) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if std::io::stdout().is_terminal() {
        registry.with(fmt::layer().with_target(false)).try_init()?;
    } else {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false),
            )
            .try_init()?;
    }
    tracing::info!(service, "logging initialised");
    Ok(())
}
