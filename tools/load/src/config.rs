//! The command line, as typed settings: what to point at, what load to offer, and for a
//! ramp, the SLO that ends it. Every knob has a modest default and a flag; values are
//! checked here, once, so the rest of the tool works with durations and rates that make
//! sense.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::schedule::Arrivals;

/// Faultline's load generator.
#[derive(Debug, Parser)]
#[command(
    name = "faultline-load",
    about = "Open-loop load for a Faultline checkout: latency from the intended send time, HDR histograms, a ramp to the knee"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The tool's modes.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Offers one constant rate to a running checkout.
    Run {
        /// Where checkout is and how to talk to it.
        #[command(flatten)]
        target: Target,
        /// The order stream.
        #[command(flatten)]
        workload: Workload,
        /// Rate and duration.
        #[command(flatten)]
        steady: Steady,
    },
    /// Steps the rate up until the SLO breaks, and reports the knee.
    Ramp {
        /// Where checkout is and how to talk to it.
        #[command(flatten)]
        target: Target,
        /// The order stream.
        #[command(flatten)]
        workload: Workload,
        /// The steps and the SLO.
        #[command(flatten)]
        ramp: Ramp,
    },
    /// `make load`: starts a fresh local system (release binaries, fresh databases and
    /// topic prefix), measures the Postgres commit ceiling, runs or ramps against it, and
    /// prints one table with commits per order and each process's RSS and CPU.
    Local {
        /// What the local run measures besides the load.
        #[command(flatten)]
        local: Local,
        /// Run or ramp.
        #[command(subcommand)]
        mode: LocalMode,
    },
}

/// The load part of `local`.
#[derive(Debug, Subcommand)]
pub enum LocalMode {
    /// One constant rate.
    Run {
        /// The order stream.
        #[command(flatten)]
        workload: Workload,
        /// Rate and duration.
        #[command(flatten)]
        steady: Steady,
    },
    /// A ramp to the knee.
    Ramp {
        /// The order stream.
        #[command(flatten)]
        workload: Workload,
        /// The steps and the SLO.
        #[command(flatten)]
        ramp: Ramp,
    },
}

/// How order-to-terminal latency is observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TerminalSource {
    /// Consume checkout's `orders.events` topic (OrderConfirmed / OrderCancelled): exact,
    /// and adds no load to checkout. Needs the broker and the topic prefix.
    Events,
    /// Poll `GET /v1/orders/{id}` every `--poll-interval`: needs only the URL, adds reads
    /// to checkout, and rounds latency up to the poll interval.
    Poll,
}

/// A running checkout to point at.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Checkout's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Allow a URL that is not on loopback (the default refuses, so a typo never loads
    /// somebody else's server).
    #[arg(long)]
    pub allow_remote: bool,
    /// Where the token signing key is (`make credentials` writes it).
    #[arg(long, default_value = ".state/auth")]
    pub auth_dir: PathBuf,
    /// Where the operator's certificate is, for `--add-stock`.
    #[arg(long, default_value = ".state/certs")]
    pub certs_dir: PathBuf,
    /// Inventory's gRPC URL, for `--add-stock`.
    #[arg(long, default_value = "https://127.0.0.1:50051")]
    pub inventory_url: String,
    /// Units of the SKU to add (creating it if needed) before the run; 0 adds none.
    #[arg(long, default_value_t = 0)]
    pub add_stock: i64,
    /// How to see orders end.
    #[arg(long, value_enum, default_value_t = TerminalSource::Poll)]
    pub terminal: TerminalSource,
    /// The broker, for `--terminal events`.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// The system's topic prefix, for `--terminal events` (`<prefix>orders.events`).
    #[arg(long, default_value = "")]
    pub topic_prefix: String,
}

/// What each order is and how the generator behaves around it.
#[derive(Debug, Clone, Args)]
pub struct Workload {
    /// How arrivals are spaced.
    #[arg(long, value_enum, default_value_t = Arrivals::Poisson)]
    pub arrivals: Arrivals,
    /// Seed of the Poisson schedule; printed with the results.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The SKU every order buys.
    #[arg(long, default_value = "LOAD-01")]
    pub sku: String,
    /// Units per order.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i64).range(1..=1_000))]
    pub quantity: i64,
    /// Distinct customers (one token each), taken in turn: checkout rate-limits per caller.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub customers: u32,
    /// Requests in flight beyond which the generator counts a send as `client_saturated`
    /// instead of sending it (it protects the generator, and shows in the results).
    #[arg(long, default_value_t = 5_000)]
    pub max_in_flight: usize,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// How long to wait after the last send for accepted orders to end.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Poll interval of `--terminal poll`.
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Where the JSON result and the chart go.
    #[arg(long, default_value = ".state/load")]
    pub out: PathBuf,
    /// No progress bar (for logs and CI).
    #[arg(long)]
    pub quiet: bool,
}

/// One rate, held for a while.
#[derive(Debug, Clone, Copy, Args)]
pub struct Steady {
    /// Orders per second offered.
    #[arg(long, default_value = "50", value_parser = parse_rate)]
    pub rate: f64,
    /// How long to offer it.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
}

/// A ramp: rates `start`, `start + step`, ... up to `max`, each for `step_duration`.
#[derive(Debug, Clone, Copy, Args)]
// Its argument group must not be called `Ramp`, the subcommand's own name.
#[group(id = "ramp_plan")]
pub struct Ramp {
    /// First rate.
    #[arg(long, default_value = "25", value_parser = parse_rate)]
    pub start_rate: f64,
    /// Added per step.
    #[arg(long, default_value = "25", value_parser = parse_rate)]
    pub rate_step: f64,
    /// Highest rate tried.
    #[arg(long, default_value = "500", value_parser = parse_rate)]
    pub max_rate: f64,
    /// How long each step lasts.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub step_duration: Duration,
    /// The SLO's p99 bound.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub slo_p99: Duration,
    /// The SLO's bound on failed orders (503s, errors, unfinished) over orders sent.
    #[arg(long, default_value_t = 0.01)]
    pub slo_failure_rate: f64,
    /// Which latency the SLO's p99 is judged on.
    #[arg(long, value_enum, default_value_t = SloLatency::Terminal)]
    pub slo_on: SloLatency,
}

/// The latency a ramp's SLO looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SloLatency {
    /// Intended send to the order's terminal state.
    Terminal,
    /// Intended send to the POST's answer.
    Post,
}

/// What `local` measures besides the load.
#[derive(Debug, Clone, Args)]
// Its argument group must not be called `Local`, the subcommand's own name.
#[group(id = "local_options")]
pub struct Local {
    /// How orders' ends are observed.
    #[arg(long, value_enum, default_value_t = TerminalSource::Events)]
    pub terminal: TerminalSource,
    /// pgbench clients for the commit ceiling.
    #[arg(long, default_value_t = 8)]
    pub pgbench_clients: u32,
    /// How long pgbench runs.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub pgbench_duration: Duration,
    /// Skip the pgbench ceiling (e.g. where pgbench is missing).
    #[arg(long)]
    pub no_pgbench: bool,
    /// Process sampling interval (RSS, CPU from /proc).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub sample_interval: Duration,
    /// The broker's pid file, as `scripts/deps.sh` writes it; if absent the broker is found
    /// by the port it listens on.
    #[arg(long, default_value = ".state/tansu.pid")]
    pub broker_pid_file: PathBuf,
    /// The broker's port, to find its process without a pid file.
    #[arg(long, default_value_t = 9092)]
    pub broker_port: u16,
    /// Saga step timeout the services run with.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub saga_step_timeout: Duration,
    /// `RUST_LOG` of the services.
    #[arg(long, default_value = "info")]
    pub service_log: String,
    /// Leave the run's databases in place afterwards, to inspect them (the services stop
    /// with the tool either way).
    #[arg(long)]
    pub keep_databases: bool,
}

/// Parses `250ms`, `10s`, `2m` or `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 250ms, 10s, 2m"))?;
    let seconds = match unit {
        "ms" => value / 1_000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3_600.0,
        other => return Err(format!("unknown unit `{other}` in `{text}` (ms, s, m, h)")),
    };
    // A day is far beyond any run this tool means to do; longer is a typo.
    if !(0.0..=86_400.0).contains(&seconds) {
        return Err(format!("`{text}` is longer than a day"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses a rate in orders per second: positive, at most 100 000.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of orders per second"))?;
    if rate.is_finite() && rate > 0.0 && rate <= 100_000.0 {
        Ok(rate)
    } else {
        Err(format!(
            "rate {text} must be above 0 and at most 100000 per second"
        ))
    }
}

/// Refuses a URL whose host is not loopback unless `allow_remote`.
pub fn check_loopback(url: &str, allow_remote: bool) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("URL `{url}`: {e}"))?;
    // An IPv6 host comes back in brackets (`[::1]`).
    let host = parsed.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    anyhow::ensure!(
        loopback || allow_remote,
        "{url} is not on loopback; pass --allow-remote if you mean to load it"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        // clap checks its own definition only when a debug build parses, so a clash (two
        // argument groups with one name) would pass a release-only `make load` unseen.
        use clap::CommandFactory;
        Cli::command().debug_assert();
        Cli::try_parse_from([
            "faultline-load",
            "local",
            "run",
            "--rate",
            "5",
            "--duration",
            "2s",
        ])
        .expect("`local run` parses");
    }

    #[test]
    fn durations_read_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1_500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("48h").is_err());
    }

    #[test]
    fn rates_must_be_positive_and_bounded() {
        assert_eq!(parse_rate("50"), Ok(50.0));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-3").is_err());
        assert!(parse_rate("1e9").is_err());
        assert!(parse_rate("NaN").is_err());
    }

    #[test]
    fn only_loopback_urls_pass_by_default() {
        assert!(check_loopback("http://127.0.0.1:8080", false).is_ok());
        assert!(check_loopback("http://localhost:8080", false).is_ok());
        assert!(check_loopback("http://[::1]:8080", false).is_ok());
        assert!(check_loopback("http://example.com", false).is_err());
        assert!(check_loopback("http://example.com", true).is_ok());
        assert!(check_loopback("not a url", true).is_err());
    }
}
